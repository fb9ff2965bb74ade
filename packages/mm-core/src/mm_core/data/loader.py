"""The training engine's entry point: records -> model-ready micro-batches, resumable exactly.

Two modes share the formatter, the collator and the packer:

- map-style (default): a pre-pass (cached, see :mod:`mm_core.data.index`) gives every record's
  length; each epoch's plan (shuffle with ``seed + epoch``, pack, cut into micro-batches, deal
  micro-batch ``m`` to rank ``m % dp_size``) is computed up front, so every rank gets the same
  number of micro-batches and the state is just ``(epoch, position)``. DataLoader workers encode
  and collate whole micro-batches.
- streaming (``basic_parameters.streaming``): no pass over the data at start-up. Records are
  dealt to ``dp_size * workers`` shards (record ``i`` to shard ``i % n``); workers encode, the
  main process packs ``pack_buffer`` samples at a time (with ``shuffle``, at least
  ``shuffle_buffer`` samples, shuffled by a draw keyed on the seed, the rank and the window's start).
  The state is each shard's position, whose turn is next, and how many micro-batches of the
  current buffer were already used.

Either way ``state_dict()`` describes exactly the micro-batches handed out so far (read-ahead
ones excluded), and a loader built with the same settings continues with the next one after
``load_state_dict``. A map-style run also resumes on another ``dp_size`` with the same global
batch, from the states of all its saved ranks (see :mod:`mm_core.data.resume`).
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from mm_core.batch import Batch
from mm_core.contracts import Formatter, require
from mm_core.data.bad_records import BadRecord, BadRecordStats
from mm_core.data.config import PACKING_SAMPLES, DataConfig, load_data_config
from mm_core.data.index import build_index
from mm_core.data.packing import group, pack_groups, pack_rows, samples_per_step
from mm_core.data.records import dataset_files, iter_all_raw_records, iter_raw_records
from mm_core.data.resume import resume_position
from mm_core.data.sources import MapMicroBatches, StreamShards, collate_samples, identity, worker_init
from mm_core.data.template import resolve_template
from mm_core.errors import ConfigError
from mm_core.specs import ModelSpec

logger = logging.getLogger("mm.data")
MAP_PACK_WINDOW = 4096  # map-style: samples packed together (lengths are known, pixels are not held)
STATE_VERSION = 1

# one produced item: (batch or None, loader state after it, bad records found with it)
Item = tuple[Batch | None, dict[str, Any], list[BadRecord]]


class MMDataLoader:
    """Iterator of micro-batches with exact resume and bounded read-ahead. See :func:`build_dataloader`."""

    def __init__(self, config: DataConfig, formatter: Any, *, seq_len: int, micro_batch_size: int,
                 dp_rank: int = 0, dp_size: int = 1, seed: int = 0, packing: bool | None = None,
                 num_epochs: int | None = None, grad_accum: int = 1):
        if grad_accum <= 0:
            raise ConfigError(f"grad_accum must be positive, got {grad_accum}")
        self.grad_accum = grad_accum
        if seq_len <= 0 or micro_batch_size <= 0 or not 0 <= dp_rank < dp_size:
            raise ConfigError(f"bad loader layout: seq_len={seq_len}, micro_batch_size={micro_batch_size}, "
                              f"dp_rank={dp_rank}, dp_size={dp_size}")
        self.config, self.formatter = config, formatter
        self.seq_len, self.micro_batch_size = seq_len, micro_batch_size
        self.dp_rank, self.dp_size, self.seed = dp_rank, dp_size, seed
        self.packing = config.basic_parameters.packing if packing is None else packing
        mode = config.basic_parameters.packing_samples
        if mode not in PACKING_SAMPLES:
            raise ConfigError(f"basic_parameters.packing_samples: unknown value '{mode}'; valid: "
                              f"{', '.join(PACKING_SAMPLES)}")
        self.fixed_samples = bool(self.packing) and mode == "fixed"  # micro_batch_size counts samples
        self.num_epochs = num_epochs
        self.streaming = config.basic_parameters.streaming
        self.num_workers = config.dataloader_param.num_workers
        self.stats = BadRecordStats()
        self._buffer: deque[Item] = deque()
        self._source: Iterator[Item] | None = None
        if self.streaming:
            dataset_files(config.basic_parameters)  # fail early on a missing file
            self._state: dict[str, Any] = {"mode": "streaming", "positions": [[0, 0] for _ in range(max(1, self.num_workers))],
                                           "rotation": 0, "skip": 0}
        else:
            self._raws = list(iter_all_raw_records(config.basic_parameters))
            self.index = build_index(self._raws, config, formatter)
            for bad in self.index.bad_records():
                self.stats.add(bad, strict=config.basic_parameters.strict)
            self._good = []
            for i, n in enumerate(self.index.lengths):
                if n > seq_len:
                    self.stats.add(BadRecord("too_long", self.index.wheres[i],
                                             f"{n} tokens > sequence length {seq_len}"),
                                   strict=config.basic_parameters.strict)
                elif n >= 0:
                    self._good.append(i)
            self._state = {"mode": "map", "epoch": 0, "position": 0}
            if not self._good:
                raise ConfigError(f"no usable records in {config.basic_parameters.dataset}: {self.stats.summary()}")
            self._plans: dict[int, list[list[list[int]]]] = {}
            self._step_samples: dict[int, list[int]] = {}
            self._plan_key: str | None = None

    # -- map-style ---------------------------------------------------------------------------

    def plan(self, epoch: int) -> list[list[list[int]]]:
        """This rank's micro-batches of ``epoch``: lists of rows, each a list of record numbers."""
        if epoch in self._plans:
            return self._plans[epoch]
        order = list(self._good)
        dl = self.config.dataloader_param
        if dl.shuffle and dl.sampler_type == "random":
            g = torch.Generator().manual_seed(self.seed + epoch)
            order = [order[i] for i in torch.randperm(len(order), generator=g).tolist()]
        elif dl.sampler_type not in ("random", "sequential"):
            raise ConfigError(f"dataloader_param.sampler_type '{dl.sampler_type}': use 'random' or 'sequential'")
        lengths = self.index.lengths
        if self.fixed_samples:
            mbs = pack_groups(order, lengths, self.micro_batch_size, self.seq_len, drop_last=dl.drop_last)
        elif self.packing:
            rows: list[list[int]] = []
            for w in range(0, len(order), MAP_PACK_WINDOW):
                window = order[w:w + MAP_PACK_WINDOW]
                rows += [[window[i] for i in r] for r in pack_rows([lengths[j] for j in window], self.seq_len)]
            mbs = group(rows, self.micro_batch_size, drop_last=dl.drop_last)
        else:
            mbs = group([[i] for i in order], self.micro_batch_size, drop_last=dl.drop_last)
        whole = self.dp_size * self.grad_accum  # every rank gets the same number of whole windows
        mbs = mbs[: len(mbs) - len(mbs) % whole]
        if not mbs:
            raise ConfigError(f"too few usable records ({len(self._good)}) for micro_batch_size="
                              f"{self.micro_batch_size} x dp_size={self.dp_size} x grad_accum={self.grad_accum}")
        self._plans = {epoch: mbs[self.dp_rank::self.dp_size]}
        self._step_samples = {epoch: samples_per_step(mbs, whole)}
        return self._plans[epoch]

    def samples_per_step(self, epoch: int = 0) -> list[int] | None:
        """Samples of each optimizer step of ``epoch`` over all data ranks (map-style; streaming:
        None, its packing windows are only known as they are read)."""
        if self.streaming:
            return None
        self.plan(epoch)
        return self._step_samples[epoch]

    def plan_key(self) -> str:
        """Hash of what fixes the global plan besides the layout: usable records, lengths, sampler."""
        if self._plan_key is None:
            dl = self.config.dataloader_param
            what = [[self.index.wheres[i] for i in self._good], [self.index.lengths[i] for i in self._good],
                    dl.shuffle, dl.sampler_type, dl.drop_last, MAP_PACK_WINDOW]
            self._plan_key = hashlib.sha256(json.dumps(what).encode()).hexdigest()[:16]
        return self._plan_key

    def batches_per_epoch(self, epoch: int = 0) -> int:
        """Micro-batches this rank gets in ``epoch`` (map-style only: streaming does not know)."""
        if self.streaming:
            raise TypeError("a streaming loader does not know its epoch length")
        return len(self.plan(epoch))

    def __len__(self) -> int:
        """Micro-batches per epoch on this rank (map-style; streaming raises TypeError)."""
        return self.batches_per_epoch(self._state.get("epoch", 0))

    def _map_items(self, state: dict[str, Any]) -> Iterator[Item]:
        epoch, position = state["epoch"], state["position"]
        while self.num_epochs is None or epoch < self.num_epochs:
            plan = self.plan(epoch)
            loader = self._torch_loader(MapMicroBatches(self._raws, plan, self.config, self.formatter),
                                        sampler=range(position, len(plan)))
            for k, batch, bads in loader:
                yield batch, {"mode": "map", "epoch": epoch, "position": k + 1}, bads
            logger.info("data epoch %d done on dp rank %d: %s", epoch, self.dp_rank, self.stats.summary())
            epoch, position = epoch + 1, 0

    # -- streaming ---------------------------------------------------------------------------

    def _stream_items(self, state: dict[str, Any]) -> Iterator[Item]:
        n_logical = max(1, self.num_workers)
        if len(state["positions"]) != n_logical:
            raise ConfigError(f"streaming state was saved with {len(state['positions'])} workers; "
                              f"set dataloader_param.num_workers={len(state['positions'])} to resume it")
        positions, rotation = [list(p) for p in state["positions"]], state["rotation"]
        skip = state["skip"]
        shards = StreamShards(self.config, self.formatter, positions, rotation, self.dp_rank, self.dp_size,
                               self.num_epochs)
        it = iter(self._torch_loader(shards))
        chunk_n = self.config.basic_parameters.pack_buffer if self.packing else self.micro_batch_size
        chunk_n = max(chunk_n, self.micro_batch_size)
        dl = self.config.dataloader_param
        shuffle = dl.shuffle and dl.sampler_type == "random"
        if shuffle:
            chunk_n = max(chunk_n, dl.shuffle_buffer)
        while True:
            start = {"positions": copy.deepcopy(positions), "rotation": rotation}
            samples, bads, ended = [], [], False
            while len(samples) < chunk_n:
                item = next(it, None)
                if item is None:
                    ended = True
                    break
                logical, where, payload, next_pos = item
                positions[logical] = next_pos
                rotation = (logical + 1) % n_logical
                if isinstance(payload, BadRecord):
                    bads.append(payload)
                elif len(payload["input_ids"]) > self.seq_len:
                    bads.append(BadRecord("too_long", where, f"{len(payload['input_ids'])} tokens > "
                                                           f"sequence length {self.seq_len}"))
                else:
                    samples.append(payload)
            end = {"mode": "streaming", "positions": copy.deepcopy(positions), "rotation": rotation, "skip": 0}
            if min(p[0] for p in positions) > min(p[0] for p in start["positions"]):
                logger.info("data epoch %d done on dp rank %d: %s", min(p[0] for p in start["positions"]),
                            self.dp_rank, self.stats.summary())
            if shuffle and len(samples) > 1:
                samples = self._shuffled_window(samples, start)
            lengths = [len(s["input_ids"]) for s in samples]
            if self.fixed_samples:
                groups = pack_groups(range(len(samples)), lengths, self.micro_batch_size, self.seq_len,
                                     drop_last=False)
            else:
                rows = pack_rows(lengths, self.seq_len) if self.packing and samples else [[i] for i in range(len(samples))]
                groups = group(rows, self.micro_batch_size, drop_last=False)
            if not groups and bads and skip == 0:
                yield None, end, bads
            for j, g in enumerate(groups):
                if j < skip:
                    continue
                after = end if j + 1 == len(groups) else {"mode": "streaming", **start, "skip": j + 1}
                yield collate_samples(samples, g, self.formatter), after, (bads if j == 0 else [])
            skip = 0
            if ended:
                return

    def _shuffled_window(self, samples: list[dict[str, Any]], start: dict[str, Any]) -> list[dict[str, Any]]:
        """The window's samples in an order drawn from the seed, the rank and where the window
        starts: a resumed run re-reads the window from that position and draws the same order."""
        key = json.dumps([self.seed, self.dp_rank, start["positions"], start["rotation"]])
        g = torch.Generator().manual_seed(int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little"))
        return [samples[i] for i in torch.randperm(len(samples), generator=g).tolist()]

    # -- shared ------------------------------------------------------------------------------

    def _torch_loader(self, dataset: Dataset, sampler: Any = None) -> DataLoader:
        dl = self.config.dataloader_param
        kw: dict[str, Any] = {}
        if self.num_workers > 0:
            kw = {"prefetch_factor": dl.prefetch_factor, "worker_init_fn": worker_init}
        return DataLoader(dataset, batch_size=None, sampler=sampler, num_workers=self.num_workers,
                          collate_fn=identity, pin_memory=dl.pin_memory, **kw)

    def _items(self) -> Iterator[Item]:
        state = copy.deepcopy(self._state)
        return self._stream_items(state) if self.streaming else self._map_items(state)

    def _pull(self) -> Item:
        if self._buffer:
            return self._buffer.popleft()
        if self._source is None:
            self._source = self._items()
        return next(self._source)  # StopIteration ends the iteration

    def __iter__(self) -> MMDataLoader:
        return self

    def __next__(self) -> Batch:
        while True:
            batch, state, bads = self._pull()
            for bad in bads:
                self.stats.add(bad, strict=self.config.basic_parameters.strict)
            self._state = state
            if batch is not None:
                return batch

    def read_ahead(self, k: int) -> list[Batch]:
        """The next ``k`` micro-batches without consuming them (``next`` returns them afterwards).

        For ``per_token_loss``: count a gradient-accumulation window's tokens before its first step.
        Fewer than ``k`` come back only at the end of the data.
        """
        if self._source is None:
            self._source = self._items()
        while sum(1 for b, _, _ in self._buffer if b is not None) < k:
            try:
                self._buffer.append(next(self._source))
            except StopIteration:
                break
        return [b for b, _, _ in self._buffer if b is not None][:k]

    def state_dict(self) -> dict[str, Any]:
        """Position after the last micro-batch returned by ``next`` (plus bad-record counts)."""
        layout = {"dp_rank": self.dp_rank, "dp_size": self.dp_size, "seed": self.seed,
                  "micro_batch_size": self.micro_batch_size, "seq_len": self.seq_len,
                  "grad_accum": self.grad_accum, "streaming": self.streaming,
                  "packing": "fixed" if self.fixed_samples else self.packing}  # fixed: another plan
        if not self.streaming:
            layout["plan_key"] = self.plan_key()
        return {"version": STATE_VERSION, "position": copy.deepcopy(self._state), "bad_records": self.stats.state_dict(),
                "layout": layout}

    def load_state_dict(self, state: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> None:
        """Continue after the saved position.

        ``state``: this rank's saved state (the layout must match: ranks, seed, batch, packing), or
        the list of every saved data rank's state in rank order, which also lets a map-style run
        resume on another ``dp_size`` with the same global batch (``dp_size * grad_accum``).
        """
        position, bad_records = resume_position(copy.deepcopy(state), self.state_dict()["layout"])
        self._state = position
        self.stats.load_state_dict(bad_records)
        self._buffer.clear()
        self._source = None


def build_dataloader(config: DataConfig | Mapping[str, Any] | str | os.PathLike[str], formatter: Any = None, *,
                     seq_len: int | None = None, micro_batch_size: int, dp_rank: int = 0, dp_size: int = 1,
                     seed: int = 0, packing: bool | None = None, num_epochs: int | None = None,
                     grad_accum: int = 1, seq_length: int | None = None,
                     hf_config: Mapping[str, Any] | None = None, model: ModelSpec | None = None) -> MMDataLoader:
    """Micro-batches of the batch contract (:mod:`mm_core.batch`) for one data-parallel rank.

    - ``config``: a :class:`DataConfig`, a dict of its sections, or a data.json/YAML file (the
      reference's layout, ``dataset_param`` wrapper allowed).
    - ``formatter``: the family formatter (``None``: the one registered under
      ``basic_parameters.template``, built with the config).
    - ``model``: the model's spec; an unset template becomes its formatter, and a template that
      does not fit it is a ConfigError naming both.
    - ``seq_len`` (alias ``seq_length``): longest sample / packed row; longer samples are skipped
      and counted as ``too_long``.
    - ``micro_batch_size``: rows per micro-batch (a row holds several samples when packing); with
      ``basic_parameters.packing_samples fixed``, samples per micro-batch, packed into as few rows
      as they fit. ``samples_per_step()`` gives each optimizer step's samples (map-style).
    - ``dp_rank``/``dp_size``: this rank's share; map-style ranks get equal micro-batch counts,
      whole gradient-accumulation windows (``grad_accum``) per epoch.
    - ``packing``: overrides ``basic_parameters.packing``; ``num_epochs``: ``None`` loops forever.
    - ``hf_config``: not needed by the pipeline (the processor comes from
      ``preprocess_parameters.model_name_or_path``); accepted so callers can pass it uniformly.

    The result iterates micro-batches (``next``), pre-reads with ``read_ahead(k)`` (for
    ``per_token_loss``: the window's token counts before its first micro-batch), has ``len()``
    (map-style: micro-batches per epoch on this rank), and saves/restores its position with
    ``state_dict()``/``load_state_dict()`` (plain data: store every rank's in the checkpoint; resume
    on the same layout and settings, or, map-style, from all ranks' states on another ``dp_size``
    with the same global batch). Bad records are skipped and counted in ``.stats``.
    """
    del hf_config
    config = load_data_config(config)
    seq_len = seq_len if seq_len is not None else seq_length
    if seq_len is None:
        raise ConfigError("build_dataloader needs seq_len (the training config's sequence length)")
    if formatter is None:
        from mm_core.plugins import get_plugin_manager

        template = resolve_template(config, model)
        formatter = get_plugin_manager().formatter(template).factory(config)
        require(formatter, Formatter, f"formatter '{template}'")
    return MMDataLoader(config, formatter, seq_len=seq_len, micro_batch_size=micro_batch_size, dp_rank=dp_rank,
                        dp_size=dp_size, seed=seed, packing=packing, num_epochs=num_epochs, grad_accum=grad_accum)


__all__ = ["MMDataLoader", "build_dataloader", "iter_raw_records"]

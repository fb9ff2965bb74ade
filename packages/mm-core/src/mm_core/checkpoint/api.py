"""In-process API for models and the training engine: one rank's weights, streamed.

- :func:`hf_to_mm_rank` reads from an HF directory only what one (tp rank, pp rank) needs and
  returns that rank's mm-named state dict (local layer numbers), with no conversion step.
- :func:`open_hf_rank` is the same, one tensor at a time and optionally only some rows of it, for
  the engine's sharded loading (a data-parallel or expert-parallel rank reads only its own rows).
- :func:`read_mm_rank` / :func:`read_mm_layout` read an mm directory written by ``mm-convert``
  (or a MindSpeed-MM one, whose layout is inferred from its rank files).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from mm_core.checkpoint.errors import ConfigError
from mm_core.checkpoint.hf import HFReader, load_hf_config
from mm_core.checkpoint.mm_dir import RankFile, rank_dir_name, rank_dirs, read_layout, resolve_iteration_dir
from mm_core.checkpoint.rowcopy import read_segments, segments
from mm_core.checkpoint.rules import Item, check_keys
from mm_core.checkpoint.sources import HFSource, Source, check_shapes
from mm_core.checkpoint.table import RuleTable
from mm_core.layout import Layout

StateDict = dict[str, torch.Tensor]


def get_converter(converter: str | RuleTable) -> RuleTable:
    """A converter object from its registered name (``Qwen2_5_VLConverter``) or as is."""
    if isinstance(converter, str):
        from mm_core.plugins import get_plugin_manager

        return get_plugin_manager().converter(converter).factory()
    return converter


def hf_to_mm_rank(converter: str | RuleTable, hf_dir: str | Path, *, tp_size: int = 1, tp_rank: int = 0,
                  vit_pp_layers: Sequence | None = None, llm_pp_layers: Sequence | None = None,
                  pp_rank: int = 0) -> StateDict | list[StateDict]:
    """One rank's mm state dict, streamed from an HF safetensors directory.

    Reads only the tensors this (``tp_rank``, ``pp_rank``) needs (and for plain column-split
    tensors such as the word embedding, only its rows). Keys are mm names with layers numbered
    from 0 on each stage, exactly what ``mm-convert ... hf_to_mm`` writes to that rank's file.
    ``vit_pp_layers`` / ``llm_pp_layers``: per-stage layer counts as in the CLI; nested lists are
    virtual pipeline chunks and then a list with one dict per chunk is returned (chunk v of pp
    rank p is flattened stage ``v * pp + p``). Without them: the whole model on one stage.
    The whole layout is validated first (ConfigError / KeyMismatchError naming the field or key).
    """
    with open_hf_rank(converter, hf_dir, tp_size=tp_size, tp_rank=tp_rank, vit_pp_layers=vit_pp_layers,
                      llm_pp_layers=llm_pp_layers, pp_rank=pp_rank) as rank:
        chunks = [{t.key: t.read() for t in chunk} for chunk in rank.chunks]
    return chunks if rank.nested else chunks[0]


@dataclass
class RankTensor:
    """One mm tensor of a rank (this tp rank's piece), not yet read."""

    key: str  # mm name, layers numbered from 0 on the stage
    meta: torch.Tensor  # the piece's shape and dtype (meta device)
    item: Item
    source: Source
    tp_size: int
    tp_rank: int

    @property
    def partial(self) -> bool:
        """Whether :meth:`read` of some rows costs only those rows (else it builds the piece)."""
        it = self.item
        whole = self.tp_size == 1 or it.tp.replicated
        if (whole or it.tp.rows_only) and self.source.rows(it) is not None:
            return True
        return whole and hasattr(self.source, "block") and it.rule.op.blocks > 1

    def read(self, rows: tuple[int, int] | None = None) -> torch.Tensor:
        """The piece, or only its rows ``[start, stop)`` of dim 0. Rows are read from disk alone
        when the converter's rule moves whole rows (a copy, a cat), or, for a stack of experts, from
        those experts' HF tensors alone when the source can (``Source.block``); otherwise the piece
        is built and sliced (one tensor at a time, never the rank's whole state)."""
        it, tp = self.item, self.tp_size
        if rows is None:
            return self.source.piece(it, tp, self.tp_rank)
        start, stop = rows
        whole = tp == 1 or it.tp.replicated
        plan = self.source.rows(it) if (whole or it.tp.rows_only) else None
        if plan is not None:
            ids, refs = plan
            mine = (ids if whole else it.tp.piece(ids, tp, self.tp_rank))[start:stop]
            out = torch.empty((mine.numel(), *self.meta.shape[1:]), dtype=self.meta.dtype)
            return read_segments(segments(mine, refs), out, self.source.fds)
        if whole and hasattr(self.source, "block"):
            return self.source.block(it, start, stop)
        return self.source.piece(it, tp, self.tp_rank)[start:stop].clone()


@dataclass
class RankStream:
    """What :func:`open_hf_rank` gives: one list of tensors per virtual chunk (one list without
    virtual chunks, then ``nested`` is False), in the HF files' order."""

    chunks: list[list[RankTensor]]
    nested: bool


@contextmanager
def open_hf_rank(converter: str | RuleTable, hf_dir: str | Path, *, tp_size: int = 1, tp_rank: int = 0,
                 vit_pp_layers: Sequence | None = None, llm_pp_layers: Sequence | None = None,
                 pp_rank: int = 0) -> Iterator[RankStream]:
    """The tensors :func:`hf_to_mm_rank` returns, to be read one at a time while the context is open
    (the layout is validated and every shape checked on entry, before anything is read)."""
    conv = get_converter(converter)
    hf_config = load_hf_config(hf_dir)
    reader = HFReader(hf_dir, conv.hf_aliases)
    placement = conv.placement(hf_config, tp_size, {"vit": vit_pp_layers, "llm": llm_pp_layers})
    if not 0 <= tp_rank < placement.tp_size:
        raise ConfigError(f"tp_rank {tp_rank} is out of range for tp_size {placement.tp_size}")
    if not 0 <= pp_rank < placement.pp:
        raise ConfigError(f"pp_rank {pp_rank} is out of range for a {placement.pp}-stage pipeline")
    plan = conv.plan(hf_config, placement, present_hf=reader.keys())
    check_keys(plan, reader.keys(), str(hf_dir))
    source = HFSource(reader)
    check_shapes(plan, source, placement.tp_size)
    tp = placement.tp_size

    def tensor(it: Item) -> RankTensor:
        full = source.meta(it)
        shape = it.tp.split_shapes(tuple(full.shape), tp)[tp_rank]
        return RankTensor(it.local_key, torch.empty(shape, dtype=full.dtype, device="meta"), it, source, tp, tp_rank)

    try:
        chunks = [[tensor(it) for it in source.order(plan.stage_items(placement.stage_of(pp_rank, v)))]
                  for v in range(placement.vpp)]
        yield RankStream(chunks, placement.nested)
    finally:
        source.close()


def read_mm_layout(mm_dir: str | Path, iteration: int | str | None = None,
                   converter: str | RuleTable | None = None) -> Layout:
    """The layout of an mm directory: ``tp_size``, ``pp_size``, ``vpp_size``, ``vit_pp_layers``,
    ``llm_pp_layers`` (as given at conversion; nested when virtual chunks were used).

    Read from ``mm_layout.json`` (written by ``mm-convert``); for MindSpeed-MM directories it is
    inferred from the rank files (the layer lists need ``converter``, else they stay None).
    """
    prefixes = None
    if converter is not None:
        conv = get_converter(converter)
        cfg_path = Path(mm_dir) / "config.json"
        if cfg_path.is_file():
            prefixes = conv.layer_prefixes(load_hf_config(mm_dir))
    return read_layout(mm_dir, iteration, prefixes)


def read_mm_rank(mm_dir: str | Path, *, tp_rank: int = 0, pp_rank: int = 0, iteration: int | str | None = None
                 ) -> tuple[StateDict | list[StateDict], Layout]:
    """``(state, layout)`` of one rank of an mm directory.

    ``state`` is that rank's mm-named dict (local layer numbers), or a list of dicts, one per
    virtual chunk, when the checkpoint was written with nested layer lists. ``iteration``:
    ``"release"``, an iteration number or ``iter_%07d``; default: the latest. Accepts our
    safetensors rank files and MindSpeed-MM ``model_optim_rng.pt`` (read with weights_only=True).
    """
    f, layout = open_mm_rank(mm_dir, tp_rank=tp_rank, pp_rank=pp_rank, iteration=iteration)
    states = [f.state(v) for v in range(f.chunks)]
    return (states if f.nested else states[0]), layout


def open_mm_rank(mm_dir: str | Path, *, tp_rank: int = 0, pp_rank: int = 0, iteration: int | str | None = None
                 ) -> tuple[RankFile, Layout]:
    """One rank's file of an mm directory, read lazily tensor by tensor (see :func:`read_mm_rank`)."""
    it_dir = resolve_iteration_dir(mm_dir, iteration)
    layout = read_layout(mm_dir, iteration)
    ranks = rank_dirs(it_dir)
    key = (tp_rank, pp_rank)
    if key not in ranks:
        raise ConfigError(f"{it_dir} has no {rank_dir_name(tp_rank, pp_rank, layout.pp_size)} "
                          f"(layout tp {layout.tp_size}, pp {layout.pp_size})")
    return RankFile(ranks[key]), layout

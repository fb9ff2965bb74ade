"""Where micro-batches are produced: DataLoader datasets for the two loading modes.

- :class:`MapMicroBatches`: item ``k`` of a rank's epoch plan, encoded and collated in a worker.
- :class:`StreamShards`: each worker reads its logical shard (record ``i`` belongs to shard
  ``i % (dp_size * workers)``) from a saved ``[epoch, next record]`` position, epoch after epoch;
  the main process packs what they yield.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from mm_core.batch import Batch
from mm_core.data.bad_records import BadRecord
from mm_core.data.collate import collate
from mm_core.data.config import DataConfig
from mm_core.data.records import RawRecord, iter_all_raw_records, parse_for


def identity(x: Any) -> Any:
    return x


def worker_init(_: int) -> None:
    torch.set_num_threads(1)


def encode_record(raw: RawRecord, config: DataConfig, formatter: Any) -> dict[str, Any]:
    return formatter.encode(parse_for(raw, config, formatter))


class MapMicroBatches(Dataset):
    """Item ``k`` of the rank's plan: encode its records and collate them into one micro-batch."""

    def __init__(self, raws: list[RawRecord], plan: list[list[list[int]]], config: DataConfig, formatter: Any):
        self.raws, self.plan, self.config, self.formatter = raws, plan, config, formatter

    def __len__(self) -> int:
        return len(self.plan)

    def __getitem__(self, k: int) -> tuple[int, Batch | None, list[BadRecord]]:
        samples: list[dict[str, Any]] = []
        rows: list[list[int]] = []
        bads: list[BadRecord] = []
        for planned in self.plan[k]:
            row = []
            for rec in planned:
                try:
                    samples.append(encode_record(self.raws[rec], self.config, self.formatter))
                    row.append(len(samples) - 1)
                except BadRecord as e:  # e.g. an image whose header was fine but whose pixels are not
                    bads.append(e)
            if row:
                rows.append(row)
        batch = collate_samples(samples, rows, self.formatter) if rows else None
        return k, batch, bads


class StreamShards(IterableDataset):
    """Each DataLoader worker reads its logical shard(s) from its saved position, epoch after epoch."""

    def __init__(self, config: DataConfig, formatter: Any, positions: list[list[int]], rotation: int,
                 dp_rank: int, dp_size: int, num_epochs: int | None):
        self.config, self.formatter = config, formatter
        self.positions, self.rotation = positions, rotation
        self.dp_rank, self.dp_size, self.num_epochs = dp_rank, dp_size, num_epochs

    def __iter__(self) -> Iterator[tuple[int, str, Any, list[int]]]:
        info = get_worker_info()
        n_logical = len(self.positions)
        physical, n_physical = (info.id, info.num_workers) if info else (0, 1)
        assert n_physical == n_logical or n_physical == 1
        if n_physical == 1:  # in-process: interleave every logical shard round-robin
            its = [self._shard((w + self.rotation) % n_logical) for w in range(n_logical)]
            live = deque(its)
            while live:
                it = live.popleft()
                item = next(it, None)
                if item is not None:
                    yield item
                    live.append(it)
            return
        yield from self._shard((physical + self.rotation) % n_logical)

    def _shard(self, logical: int) -> Iterator[tuple[int, str, Any, list[int]]]:
        n_shards = self.dp_size * len(self.positions)
        shard = self.dp_rank * len(self.positions) + logical
        epoch, pos = self.positions[logical]
        while self.num_epochs is None or epoch < self.num_epochs:
            owned = 0
            for i, raw in enumerate(iter_all_raw_records(self.config.basic_parameters)):
                if i % n_shards != shard:
                    continue
                owned += 1
                if i < pos:
                    continue
                try:
                    payload: Any = encode_record(raw, self.config, self.formatter)
                except BadRecord as e:
                    payload = e
                yield logical, raw.where, payload, [epoch, i + 1]
            if owned == 0:
                return  # fewer records than shards: this shard is empty, never spin on it
            epoch, pos = epoch + 1, 0


def collate_samples(samples: list[dict[str, Any]], rows: list[list[int]], formatter: Any) -> Batch:
    return collate(samples, rows, pad_token_id=formatter.pad_token_id, dummy_vision=formatter.dummy_vision())

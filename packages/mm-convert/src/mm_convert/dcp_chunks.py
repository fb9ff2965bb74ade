"""DCP tensors written and read in row blocks, so that a tensor larger than the memory budget
(GLM-4.5V's merged experts: 128 x 4096 x 2816 values a layer) never exists whole in memory.

Writing: a tensor listed in ``chunk_rows`` is planned as consecutive row blocks (DCP shards with
their offsets, like a DTensor's), each made by ``make[fqn](block)`` only when the writer asks for
it. Any DCP reader sees one tensor of the full size. Reading: :func:`load_rows` fills rows
``[start, stop)`` of a stored tensor, however it was chunked, without reading the rest.
"""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.metadata import ChunkStorageMetadata, MetadataIndex, TensorStorageMetadata
from torch.distributed.checkpoint.planner import LoadPlan, TensorWriteData, WriteItem, WriteItemType
from torch.distributed.checkpoint.planner_helpers import create_read_items_for_chunk_list

from mm_convert.dcp import _LazyPlanner
from mm_convert.output import Progress


class ChunkedLazyPlanner(_LazyPlanner):
    """:class:`_LazyPlanner` whose ``chunk_rows`` tensors are written as row blocks."""

    def __init__(self, make: dict[str, Any], bar: Progress, chunk_rows: dict[str, int]):
        super().__init__(make, bar)
        self._rows = chunk_rows

    def create_local_plan(self) -> Any:
        plan = super().create_local_plan()
        items = []
        for item in plan.items:
            rows = self._rows.get(item.index.fqn)
            if rows is None or item.tensor_data is None:
                items.append(item)
                continue
            size = item.tensor_data.size
            for start in range(0, size[0], rows):
                offsets = torch.Size([start] + [0] * (len(size) - 1))
                sizes = torch.Size([min(rows, size[0] - start), *size[1:]])
                items.append(WriteItem(index=MetadataIndex(item.index.fqn, offsets), type=WriteItemType.SHARD,
                                       tensor_data=TensorWriteData(ChunkStorageMetadata(offsets, sizes),
                                                                   item.tensor_data.properties, size)))
        self.plan = dataclasses.replace(plan, items=items)
        return self.plan

    def resolve_data(self, write_item: Any) -> Any:
        fqn = write_item.index.fqn
        rows = self._rows.get(fqn)
        if rows is None:
            return super().resolve_data(write_item)
        t = self._make[fqn](write_item.index.offset[0] // rows)
        self._bar.update(t.numel() * t.element_size())
        return t


class _RowsPlanner(DefaultLoadPlanner):
    """Reads rows ``[start, start + len)`` of one stored tensor into ``dest``."""

    def __init__(self, fqn: str, start: int, dest: torch.Tensor):
        super().__init__(flatten_state_dict=False)
        self._fqn, self._start, self._dest = fqn, start, dest

    def create_local_plan(self) -> LoadPlan:
        md = self.metadata.state_dict_metadata[self._fqn]
        assert isinstance(md, TensorStorageMetadata)
        chunk = ChunkStorageMetadata(torch.Size([self._start] + [0] * (self._dest.dim() - 1)), self._dest.shape)
        return LoadPlan(create_read_items_for_chunk_list(self._fqn, md, [chunk]))

    def lookup_tensor(self, index: MetadataIndex) -> torch.Tensor:
        return self._dest


def load_rows(dcp_dir: str | Path, fqn: str, start: int, stop: int, meta: torch.Tensor) -> torch.Tensor:
    """Rows ``[start, stop)`` of the stored tensor ``fqn`` (``meta``: its full shape and dtype)."""
    dest = torch.empty(stop - start, *meta.shape[1:], dtype=meta.dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "no process group: running as a single process"
        dcp.load({fqn: dest}, storage_reader=dcp.FileSystemReader(str(dcp_dir)), planner=_RowsPlanner(fqn, start, dest),
                 no_dist=True)
    return dest

"""Engine weights from a DCP checkpoint written under another system's names, read shard by shard.

Example: the reference system's GLM-4.5V layout (``mm-convert ExpertMergeDcpConverter hf_to_dcp``)
stores ``model.`` + Hub names with each MoE layer's experts merged. A family says where each of
its weights lies in such a checkpoint with ``ModelSpec.checkpoint_sources(model, stored)``:
``{whole-model mm name: StoredSource}``, or None when ``stored`` (the checkpoint's tensor names ->
shapes) is not a layout it knows. A weight is ``op.forward`` of its stored tensors, each first
viewed in its ``views`` shape (merged experts ``[E*H, 2I]`` as ``[E, H, 2I]``).

Each rank reads only what it holds (DCP reads with ``no_dist``: no collective, ranks may differ):

- one stored tensor of the weight's own shape: the rank's block, whatever its shard;
- an op that only moves rows of dim 0 (concat, interleave, a view of leading dims) on a rank that
  holds whole rows (FSDP2, expert and column-parallel shards): the stored row runs of its rows,
  straight into the parameter's memory;
- anything else: the stored tensors whole, transformed, then the rank's block copied (a weight at
  a time; fused tensors under a column split of a row-parallel shard, which GLM-4.5V never has).
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.metadata import ChunkStorageMetadata, MetadataIndex, TensorStorageMetadata
from torch.distributed.checkpoint.planner import LoadPlan
from torch.distributed.checkpoint.planner_helpers import create_read_items_for_chunk_list

from mm_core.checkpoint.ops import IDENTITY, Transform
from mm_core.checkpoint.rowcopy import row_ids
from mm_core.errors import ConfigError

_SHIFT = 40  # row_ids' part index lives above this bit


@dataclass(frozen=True)
class StoredSource:
    """One engine weight = ``op.forward([stored[k].view(views[i]) for i, k in enumerate(keys)])``.

    ``keys``: the checkpoint's flattened DCP names; ``views``: one shape per key (None: as stored),
    or empty for none at all.
    """

    keys: tuple[str, ...]
    op: Transform = IDENTITY
    views: tuple[tuple[int, ...] | None, ...] = ()

    def view(self, i: int, stored: Sequence[int]) -> tuple[int, ...]:
        v = self.views[i] if self.views else None
        return tuple(stored) if v is None else tuple(v)


def find_sources(model: Any, stored: Mapping[str, torch.Size]) -> tuple[str, dict[str, StoredSource]] | None:
    """(model name, sources) of the first registered model whose ``checkpoint_sources`` knows ``stored``."""
    from mm_core.plugins import get_plugin_manager

    for spec in get_plugin_manager().models:
        hook = getattr(spec, "checkpoint_sources", None)
        if hook is not None and (sources := hook(model, stored)) is not None:
            return spec.name, sources
    return None


def stored_tensors(path: str | Path) -> dict[str, TensorStorageMetadata]:
    md = dcp.FileSystemReader(str(path)).read_metadata().state_dict_metadata
    return {k: v for k, v in md.items() if isinstance(v, TensorStorageMetadata)}


def load_foreign(path: str | Path, targets: Mapping[str, Any], sources: Mapping[str, StoredSource],
                 what: str) -> None:
    """Fill ``targets`` (whole-model mm name -> tensor or DTensor, filled in place) from ``path``."""
    stored = stored_tensors(path)
    unknown = sorted(n for n in targets if n not in sources)
    absent = sorted({k for n in targets if n in sources for k in sources[n].keys if k not in stored})
    if unknown or absent:
        raise FileNotFoundError(
            f"checkpoint {path} ({what}) lacks what this model needs: "
            + (f"no source for {unknown[:5]} (of {len(unknown)}); " if unknown else "")
            + (f"missing tensors {absent[:5]} (of {len(absent)}); " if absent else "")
            + "it was written for another model or config.json")
    requests: list[tuple[str, ChunkStorageMetadata, torch.Tensor]] = []
    whole: list[tuple[str, torch.Tensor, tuple[int, ...]]] = []
    for name, dst in targets.items():
        local, offset = _local_block(dst)
        src = sources[name]
        shapes = [src.view(i, stored[k].size) for i, k in enumerate(src.keys)]
        for k, shape in zip(src.keys, shapes):
            if math.prod(shape) != math.prod(stored[k].size):
                raise ConfigError(f"checkpoint {path}: {k} {tuple(stored[k].size)} cannot be viewed as {shape} for "
                                  f"{name} ({what})")
        made = tuple(src.op.forward_shape(shapes))
        if made != tuple(dst.shape):
            raise ConfigError(f"checkpoint {path}: {name} would be {made} from {list(src.keys)}, the model has "
                              f"{tuple(dst.shape)} ({what}); the checkpoint is of another config.json")
        rows = _row_requests(src, shapes, stored, local, offset, tuple(dst.shape))
        if rows is None:
            whole.append((name, local, offset))
        else:
            requests += rows
    _read(path, requests)
    for name, local, offset in whole:
        src = sources[name]
        parts = []
        for i, k in enumerate(src.keys):
            full = torch.empty(tuple(stored[k].size), dtype=stored[k].properties.dtype)
            _read(path, [(k, ChunkStorageMetadata(torch.Size([0] * full.dim()), full.shape), full)])
            parts.append(full.view(src.view(i, full.shape)))
        block = src.op.forward(parts)
        for d, (start, n) in enumerate(zip(offset, local.shape)):
            block = block.narrow(d, start, n)
        with torch.no_grad():
            local.copy_(block)


def _local_block(dst: Any) -> tuple[torch.Tensor, tuple[int, ...]]:
    """This rank's tensor of ``dst`` and its offset in the whole tensor."""
    if hasattr(dst, "to_local"):  # a DTensor (FSDP2, expert or tensor parallel)
        from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

        local = dst.to_local()
        shape, offset = compute_local_shape_and_global_offset(dst.shape, dst.device_mesh, dst.placements)
        assert tuple(shape) == tuple(local.shape), (shape, local.shape)
        return local, tuple(offset)
    return dst, (0,) * dst.dim()


def _row_requests(src: StoredSource, shapes: list[tuple[int, ...]], stored: Mapping[str, TensorStorageMetadata],
                  local: torch.Tensor, offset: tuple[int, ...], full: tuple[int, ...]
                  ) -> list[tuple[str, ChunkStorageMetadata, torch.Tensor]] | None:
    """Reads that fill ``local`` from the stored tensors without reading other ranks' rows, or None."""
    if len(src.keys) == 1 and src.op.arity == 1 and type(src.op) is Transform and \
            shapes[0] == tuple(stored[src.keys[0]].size):  # the same tensor: this rank's block, any shard
        return [(src.keys[0], ChunkStorageMetadata(torch.Size(offset), local.shape), local)]
    if not src.op.rows_only or local.dim() == 0 or tuple(local.shape[1:]) != full[1:] or not local.is_contiguous():
        return None
    ids = src.op.forward([row_ids(i, s[0]) for i, s in enumerate(shapes)])[offset[0]:offset[0] + local.shape[0]]
    if ids.numel() == 0:
        return []
    brk = (torch.nonzero(ids[1:] != ids[:-1] + 1).flatten() + 1).tolist()
    out = []
    for start, end in zip([0, *brk], [*brk, ids.numel()]):
        first = int(ids[start])
        part, row = first >> _SHIFT, first & ((1 << _SHIFT) - 1)
        key = src.keys[part]
        size = tuple(stored[key].size)
        per = shapes[part][0] and size[0] // shapes[part][0]  # stored rows in one viewed row
        if per * shapes[part][0] != size[0]:
            return None  # a view that is not of leading dims
        dest = local[start:end].view(((end - start) * per, *size[1:]))
        out.append((key, ChunkStorageMetadata(torch.Size([row * per] + [0] * (len(size) - 1)), dest.shape), dest))
    return out


class _ChunksPlanner(DefaultLoadPlanner):
    """Reads each request's block of a stored tensor into its destination tensor."""

    def __init__(self, requests: list[tuple[str, ChunkStorageMetadata, torch.Tensor]]):
        super().__init__(flatten_state_dict=False)
        self._requests = requests

    def create_local_plan(self) -> LoadPlan:
        items = []
        for n, (fqn, chunk, _) in enumerate(self._requests):
            md = self.metadata.state_dict_metadata[fqn]
            assert isinstance(md, TensorStorageMetadata)
            items += [dataclasses.replace(it, dest_index=MetadataIndex(fqn, it.dest_index.offset, n))
                      for it in create_read_items_for_chunk_list(fqn, md, [chunk])]
        return LoadPlan(items)

    def lookup_tensor(self, index: MetadataIndex) -> torch.Tensor:
        assert index.index is not None
        return self._requests[index.index][2]


def _read(path: str | Path, requests: list[tuple[str, ChunkStorageMetadata, torch.Tensor]]) -> None:
    if not requests:
        return
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # "no process group: running as a single process"
        dcp.load({}, storage_reader=dcp.FileSystemReader(str(path)), planner=_ChunksPlanner(requests), no_dist=True)

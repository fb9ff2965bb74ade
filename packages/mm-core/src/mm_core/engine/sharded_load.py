"""Sharded loading: a stage built and parallelised on the meta device is materialised with
``to_empty`` and each rank fills only its own shard of every tensor, read one tensor at a time.

The parallel layers stack up as follows. The checkpoint stream gives a tensor's tensor-parallel
piece (what a tp rank's mm file holds). Expert parallel keeps a slice of dim 0 of the whole
tensor (a DTensor ``Shard(0)`` whose global shape is the piece's). FSDP2 then splits dim 0 of what
is left over the data-parallel ranks, ``torch.chunk``-style (rank ``r`` gets rows from
``r * ceil(n / dp)``; trailing ranks may get fewer or none). So before FSDP2 the engine records,
for every checkpoint tensor, where its pre-FSDP local tensor lies in the piece (:func:`regions`);
after FSDP2 and ``to_empty`` (:func:`fill`) each rank reads exactly the rows it holds.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

from mm_core.nn.state import CheckpointMismatchError, checkpoint_tensors

BLOCK_BYTES = 64 * 2**20  # rows read and copied at a time


class StreamTensor(Protocol):
    """One tensor of a rank's checkpoint piece (``mm_core.checkpoint.api.RankTensor``); one with a
    true ``partial`` attribute reads some rows at the cost of those rows alone."""

    key: str
    meta: torch.Tensor

    def read(self, rows: tuple[int, int] | None = None) -> torch.Tensor: ...


@dataclass(frozen=True)
class Region:
    """Where a tensor's pre-FSDP local part lies: its local and global shapes and the global offset
    of the local part (all zeros for a plain tensor)."""

    local: tuple[int, ...]
    whole: tuple[int, ...]
    offset: tuple[int, ...]


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if hasattr(t, "to_local") else t


def regions(model: nn.Module) -> dict[str, Region]:
    """Every checkpoint tensor's :class:`Region`, taken after tp and ep and before FSDP2."""
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    out = {}
    for name, t in checkpoint_tensors(model).items():
        if hasattr(t, "device_mesh"):
            local, offset = compute_local_shape_and_global_offset(t.shape, t.device_mesh, t.placements)
            out[name] = Region(tuple(local), tuple(t.shape), tuple(offset))
        else:
            out[name] = Region(tuple(t.shape), tuple(t.shape), (0,) * t.dim())
    return out


def _padding(model: nn.Module, name: str) -> Any:
    path, _, pname = name.rpartition(".")
    module = model.get_submodule(path)
    return getattr(module, "mm_vocab_padding", None) or getattr(module, "mm_param_padding", {}).get(pname)


@dataclass(frozen=True)
class DataShard:
    """This rank's place on the mesh FSDP2 shards over (``rank`` of ``size``)."""

    rank: int
    size: int


def _window(name: str, piece: tuple[int, ...], region: Region, target: tuple[int, ...],
            fsdp: DataShard | None) -> list[tuple[int, int]]:
    """Per dim, ``[start, stop)`` of the piece this rank's final local tensor holds."""
    if piece == region.local:  # the tp piece is the local tensor (or nothing shards it)
        base = (0,) * len(piece)
    elif piece == region.whole:  # expert parallel: a slice of the whole tensor
        base = region.offset
    else:
        raise CheckpointMismatchError(f"{name}: the checkpoint piece {piece} is neither the local {region.local} "
                                      f"nor the whole {region.whole} tensor of this rank")
    first = base[0] + (fsdp.rank * math.ceil(region.local[0] / fsdp.size) if fsdp is not None and piece else 0)
    starts = (first, *base[1:])
    return [(s, s + n) for s, n in zip(starts, target)]


def _copy_rows(t: StreamTensor, win: list[tuple[int, int]], dst: torch.Tensor) -> None:
    """Rows ``win[0]`` of ``t`` (and ``win[1:]`` of the other dims) into ``dst``: a block of about
    ``BLOCK_BYTES`` at a time where the stream reads rows alone (``partial``), so the transient is a
    block (a few experts of a stack) rather than the rank's whole share of the tensor."""
    (a, b), rest = win[0], tuple(slice(x, y) for x, y in win[1:])
    row_bytes = max(1, math.prod(t.meta.shape[1:]) * t.meta.element_size())
    step = max(1, BLOCK_BYTES // row_bytes) if getattr(t, "partial", False) else b - a
    for start in range(a, b, step):
        stop = min(b, start + step)
        dst[start - a:stop - a].copy_(t.read((start, stop))[(slice(None), *rest)])


def fill(model: nn.Module, tensors: Iterable[StreamTensor], before: Mapping[str, Region],
         fsdp: DataShard | None, fsdp_params: set[str], *, source: str) -> None:
    """Copy into each checkpoint tensor of the materialised ``model`` the part this rank holds.

    ``before``: :func:`regions` taken before FSDP2; ``fsdp_params``: the parameter names FSDP2
    sharded over ``fsdp`` (expert-parallel ones are not). Every tensor must be filled.
    """
    targets = checkpoint_tensors(model)
    done = set()
    with torch.no_grad():
        for t in tensors:
            if t.key not in targets:
                continue  # check_state refused unexpected keys before anything was built
            dst = _local(targets[t.key])
            region = before[t.key]
            padding = _padding(model, t.key)
            piece = tuple(padding.pad_piece(t.meta).shape) if padding is not None else tuple(t.meta.shape)
            win = _window(t.key, piece, region, tuple(dst.shape), fsdp if t.key in fsdp_params else None)
            if dst.numel() == 0:
                done.add(t.key)
                continue
            if padding is not None or not piece:  # padded vocabulary shards and scalars: the whole piece
                src = t.read()
                src = padding.pad_piece(src) if padding is not None else src
                src = src[tuple(slice(a, b) for a, b in win)] if piece else src
                dst.copy_(src)
            else:
                _copy_rows(t, win, dst)
            done.add(t.key)
    left = sorted(set(targets) - done)
    if left:
        raise CheckpointMismatchError(f"{source} left {len(left)} tensor(s) of the model unfilled: {left[:5]}")


@dataclass
class WholeTensor:
    """A tensor already in memory, offered like a checkpoint stream's (the LoRA adapters' start)."""

    key: str
    value: torch.Tensor

    @property
    def meta(self) -> torch.Tensor:
        return self.value.to("meta")

    def read(self, rows: tuple[int, int] | None = None) -> torch.Tensor:
        return self.value if rows is None else self.value[rows[0]:rows[1]]


def lora_start(model: nn.Module, seed: int, before: Mapping[str, Region]) -> list[WholeTensor]:
    """The LoRA adapters' whole starting values, as ``attach`` gave them (a function of the seed and
    the adapter's whole-model name), for :func:`fill` after ``to_empty``."""
    from mm_core.lora.adapter import init_pair

    out = []
    for path, module in model.named_modules():
        meta = getattr(module, "mm_lora", None)
        if meta is None or not hasattr(module, "lora_A"):
            continue
        for s in range(len(module.lora_A)):
            ka, kb = f"{path}.lora_A.{s}", f"{path}.lora_B.{s}"
            a, b = torch.empty(before[ka].whole), torch.empty(before[kb].whole)
            init_pair(a, b, seed, f"{meta.name}.lora_A.{s}")
            out += [WholeTensor(ka, a), WholeTensor(kb, b)]
    return out


def lora_indices_on_cpu(model: nn.Module, blocks: Mapping[str, object]) -> None:
    """``attach`` on a meta model leaves its LoRA row indices (plain attributes, no buffers) on meta
    with no values: recompute them on the CPU (from the sections and the tp layout, as ``attach``
    does) before FSDP2 replaces the weights; :func:`lora_indices_to` moves them after ``to_empty``."""
    from mm_core.lora.adapter import _local_rows

    for path, module in model.named_modules():
        meta = getattr(module, "mm_lora", None)
        if meta is None or not hasattr(module, "lora_A"):
            continue
        concat = meta.sections.concat_of_row
        index = None if meta.index is None else concat
        local = _local_rows(module.weight, blocks.get(f"{path}.weight"))
        local_index = None if meta.local_index is None else concat[local]
        module.mm_lora = dataclasses.replace(meta, index=index, local_index=local_index)


def lora_indices_to(model: nn.Module, device: torch.device) -> None:
    for module in model.modules():
        meta = getattr(module, "mm_lora", None)
        if meta is not None and hasattr(module, "lora_A"):
            module.mm_lora = dataclasses.replace(
                meta, index=None if meta.index is None else meta.index.to(device),
                local_index=None if meta.local_index is None else meta.local_index.to(device))


def check_buffers(model: nn.Module, what: str) -> None:
    """``to_empty`` leaves non-persistent buffers (no checkpoint holds them) uninitialised: a module
    with one must recompute it in ``reset_buffers()``, which is called here."""
    persistent = set(model.state_dict(keep_vars=True))
    for path, module in model.named_modules():
        own = [n for n, _ in module.named_buffers(recurse=False) if (f"{path}.{n}" if path else n) not in persistent]
        if not own:
            continue
        reset = getattr(module, "reset_buffers", None)
        if reset is None:
            raise CheckpointMismatchError(
                f"{what}: {path or type(module).__name__} has non-persistent buffer(s) {own} that a meta-device "
                "start leaves uninitialised; give the module a reset_buffers() that recomputes them")
        reset()

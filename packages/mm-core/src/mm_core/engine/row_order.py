"""Tensors whose tensor-parallel global view is a row permutation of the checkpoint's order.

A Linear made of ``parts`` row blocks (gated ``linear_fc1`` = ``[gate; up]``, InternViT's
``[Q; K; V]``) is sharded so that tp rank r holds ``[gate_r; up_r]``: the DTensor's global view is
then ``[gate_0; up_0; gate_1; up_1; ...]``. Checkpoints must hold the canonical ``[gate; up]`` (so
they reshard to any tp size and convert to HF), so such parameters (and their optimizer states)
are reordered on save and load, one tensor at a time. The parallel style says so with its class
attribute ``row_sections`` (the number of parts).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.distributed.tensor import DTensor, distribute_tensor

RowBlocks = tuple[int, int]  # (tp, parts)


def gated_parameters(model: nn.Module, plan: dict[str, Any], tp: int) -> dict[str, RowBlocks]:
    """``{parameter name: (tp, parts)}`` of the parameters a sectioned style shards (names relative to ``model``)."""
    out = {}
    for path, style in plan.items():
        parts = int(getattr(style, "row_sections", 0))
        if parts > 1:
            for pname, _ in model.get_submodule(path).named_parameters(recurse=False):
                out[f"{path}.{pname}"] = (tp, parts)
    return out


def blocked_to_canonical(t: torch.Tensor, tp: int, parts: int = 2) -> torch.Tensor:
    """``[g_0; u_0; g_1; u_1; ...]`` -> ``[gate; up]`` (``parts`` blocks per rank)."""
    blocks = [b.chunk(parts, dim=0) for b in t.chunk(tp, dim=0)]
    return torch.cat([b[i] for i in range(parts) for b in blocks])


def canonical_to_blocked(t: torch.Tensor, tp: int, parts: int = 2) -> torch.Tensor:
    """``[gate; up]`` -> ``[g_0; u_0; g_1; u_1; ...]`` (``parts`` blocks per rank)."""
    sections = [s.chunk(tp) for s in t.chunk(parts, dim=0)]
    return torch.cat([sections[i][r] for r in range(tp) for i in range(parts)])


def _reorder(t: torch.Tensor, fn, blocks: RowBlocks) -> torch.Tensor:
    if not isinstance(t, DTensor):
        return fn(t, *blocks)
    full = fn(t.full_tensor(), *blocks)
    return distribute_tensor(full, t.device_mesh, t.placements, src_data_rank=None)


def to_canonical(t: torch.Tensor, blocks: RowBlocks) -> torch.Tensor:
    """A copy of ``t`` in checkpoint order, with ``t``'s sharding."""
    return _reorder(t, blocked_to_canonical, blocks)


def to_blocked(t: torch.Tensor, blocks: RowBlocks) -> torch.Tensor:
    return _reorder(t, canonical_to_blocked, blocks)


def copy_blocked_(dst: torch.Tensor, canonical: torch.Tensor, blocks: RowBlocks) -> None:
    """Write checkpoint-order ``canonical`` into the tp-blocked ``dst`` (same sharding)."""
    src = to_blocked(canonical, blocks)
    with torch.no_grad():
        if isinstance(dst, DTensor):
            dst.to_local().copy_(src.to_local())
        else:
            dst.copy_(src)

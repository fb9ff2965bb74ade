"""Tensors whose tensor-parallel global view is a row permutation of the checkpoint's order.

A fused gated ``linear_fc1`` (``[gate; up]``) is sharded so that tp rank r holds
``[gate_r; up_r]``: the DTensor's global view is then ``[gate_0; up_0; gate_1; up_1; ...]``.
Checkpoints must hold the canonical ``[gate; up]`` (so they reshard to any tp size and convert to
HF), so such parameters (and their optimizer states) are reordered on save and load, one tensor at
a time. A family marks such a parallel style with the class attribute ``gated_rows = True``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.distributed.tensor import DTensor, distribute_tensor


def is_gated_style(style: Any) -> bool:
    return bool(getattr(style, "gated_rows", False))


def gated_parameters(model: nn.Module, plan: dict[str, Any], tp: int) -> dict[str, int]:
    """``{parameter name: tp}`` of the parameters a gated style shards (names relative to ``model``)."""
    out = {}
    for path, style in plan.items():
        if is_gated_style(style):
            for pname, _ in model.get_submodule(path).named_parameters(recurse=False):
                out[f"{path}.{pname}"] = tp
    return out


def blocked_to_canonical(t: torch.Tensor, tp: int) -> torch.Tensor:
    """``[g_0; u_0; g_1; u_1; ...]`` -> ``[gate; up]``."""
    blocks = [b.chunk(2, dim=0) for b in t.chunk(tp, dim=0)]
    return torch.cat([b[0] for b in blocks] + [b[1] for b in blocks])


def canonical_to_blocked(t: torch.Tensor, tp: int) -> torch.Tensor:
    """``[gate; up]`` -> ``[g_0; u_0; g_1; u_1; ...]``."""
    gate, up = t.chunk(2, dim=0)
    return torch.cat([torch.cat([g, u]) for g, u in zip(gate.chunk(tp), up.chunk(tp))])


def _reorder(t: torch.Tensor, fn, tp: int) -> torch.Tensor:
    if not isinstance(t, DTensor):
        return fn(t, tp)
    full = fn(t.full_tensor(), tp)
    return distribute_tensor(full, t.device_mesh, t.placements, src_data_rank=None)


def to_canonical(t: torch.Tensor, tp: int) -> torch.Tensor:
    """A copy of ``t`` in checkpoint order, with ``t``'s sharding."""
    return _reorder(t, blocked_to_canonical, tp)


def to_blocked(t: torch.Tensor, tp: int) -> torch.Tensor:
    return _reorder(t, canonical_to_blocked, tp)


def copy_blocked_(dst: torch.Tensor, canonical: torch.Tensor, tp: int) -> None:
    """Write checkpoint-order ``canonical`` into the tp-blocked ``dst`` (same sharding)."""
    src = to_blocked(canonical, tp)
    with torch.no_grad():
        if isinstance(dst, DTensor):
            dst.to_local().copy_(src.to_local())
        else:
            dst.copy_(src)

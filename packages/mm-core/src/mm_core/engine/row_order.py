"""Tensors whose tensor-parallel global view is a row permutation of the checkpoint's order.

A Linear made of ``parts`` row blocks (gated ``linear_fc1`` = ``[gate; up]``, InternViT's
``[Q; K; V]``) is sharded so that tp rank r holds ``[gate_r; up_r]``: the DTensor's global view is
then ``[gate_0; up_0; gate_1; up_1; ...]``. Checkpoints must hold the canonical ``[gate; up]`` (so
they reshard to any tp size and convert to HF), so such parameters (and their optimizer states)
are reordered on save and load, one tensor at a time. The parallel style says so with its class
attribute ``row_sections`` (the number of parts). A padded vocabulary (``vocab_padding``) is the
other such case: its ghost rows are dropped on save and put back on load.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.distributed.tensor import DTensor, distribute_tensor

from mm_core.nn.head_padding import HeadPadding
from mm_core.nn.vocab_padding import VocabPadding

RowBlocks = tuple[int, int]  # (tp, parts)
RowMap = RowBlocks | VocabPadding | HeadPadding  # how a parameter's engine rows map to the checkpoint's
Padded = (VocabPadding, HeadPadding)  # row maps with pad / unpad


def gated_parameters(model: nn.Module, plan: dict[str, Any], tp: int) -> dict[str, RowMap]:
    """``{parameter name: row map}`` of the parameters whose engine row order is not the checkpoint's:
    those a sectioned style shards (``(tp, parts)``) and padded vocabularies (names relative to ``model``)."""
    out: dict[str, RowMap] = {}
    for path, style in plan.items():
        for pname, rows in getattr(style, "param_rows", {}).items():  # per parameter (padded heads)
            out[f"{path}.{pname}"] = rows
        parts = int(getattr(style, "row_sections", 0))
        padding = getattr(style, "vocab_padding", None)
        if parts > 1 or padding is not None:
            for pname, _ in model.get_submodule(path).named_parameters(recurse=False):
                out[f"{path}.{pname}"] = padding if padding is not None else (tp, parts)
    return out


def blocked_to_canonical(t: torch.Tensor, tp: int, parts: int = 2) -> torch.Tensor:
    """``[g_0; u_0; g_1; u_1; ...]`` -> ``[gate; up]`` (``parts`` blocks per rank)."""
    blocks = [b.chunk(parts, dim=0) for b in t.chunk(tp, dim=0)]
    return torch.cat([b[i] for i in range(parts) for b in blocks])


def canonical_to_blocked(t: torch.Tensor, tp: int, parts: int = 2) -> torch.Tensor:
    """``[gate; up]`` -> ``[g_0; u_0; g_1; u_1; ...]`` (``parts`` blocks per rank)."""
    sections = [s.chunk(tp) for s in t.chunk(parts, dim=0)]
    return torch.cat([sections[i][r] for r in range(tp) for i in range(parts)])


def canonical_rows(t: torch.Tensor, rows: RowMap) -> torch.Tensor:
    """A whole (plain) tensor in engine row order -> checkpoint order."""
    return rows.unpad(t) if isinstance(rows, Padded) else blocked_to_canonical(t, *rows)


def engine_rows(t: torch.Tensor, rows: RowMap) -> torch.Tensor:
    """A whole (plain) tensor in checkpoint order -> engine row order."""
    return rows.pad(t) if isinstance(rows, Padded) else canonical_to_blocked(t, *rows)


def _reorder(t: torch.Tensor, fn, rows: RowMap) -> torch.Tensor:
    if not isinstance(t, DTensor):
        return fn(t, rows)
    full = fn(t.full_tensor(), rows)
    return distribute_tensor(full, t.device_mesh, t.placements, src_data_rank=None)


def to_canonical(t: torch.Tensor, rows: RowMap) -> torch.Tensor:
    """A copy of ``t`` in checkpoint order, with ``t``'s sharding."""
    return _reorder(t, canonical_rows, rows)


def to_blocked(t: torch.Tensor, rows: RowMap) -> torch.Tensor:
    return _reorder(t, engine_rows, rows)


def copy_blocked_(dst: torch.Tensor, canonical: torch.Tensor, rows: RowMap) -> None:
    """Write checkpoint-order ``canonical`` into the engine-ordered ``dst`` (same sharding)."""
    src = to_blocked(canonical, rows)
    with torch.no_grad():
        if isinstance(dst, DTensor):
            dst.to_local().copy_(src.to_local())
        else:
            dst.copy_(src)

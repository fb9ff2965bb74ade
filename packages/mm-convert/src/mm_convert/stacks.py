"""Stacked tensors (a MoE layer's experts, ``Transform.blocks > 1``) moved a block of slices at a time.

GLM-4.5V's stacked gate/up is 2.95 GB a layer in bf16: every verb fills or splits such a tensor a
few experts at a time (at most ``block_mb`` MiB, at least one expert), so it never exists whole in
memory. Other tensors are moved whole or file to file, except through DCP, where a plain tensor
larger than a block (the 1.24 GB word embedding) is written and read back in row blocks too.
"""

from __future__ import annotations

import torch

from mm_core.checkpoint.errors import ConfigError
from mm_core.checkpoint.ops import Transform

BLOCK_MB = 64.0  # default budget of one block (GLM-4.5V: two experts of gate/up, 2 x 23 MiB)


def block_bytes(block_mb: float) -> int:
    """The ``block_mb`` flag in bytes (refused when not positive: it would mean no progress)."""
    if not block_mb > 0:
        raise ConfigError(f"block_mb (--cfg.block_mb; --block_mb for hf_to_dcp / dcp_to_hf) must be a positive "
                          f"number of MiB, got {block_mb}")
    return int(block_mb * 1024**2)


def stack_rows(meta: torch.Tensor, op: Transform, budget: int, least: int = 1) -> int | None:
    """Slices of dim 0 per block of a stacked tensor (``meta``: its shape and dtype) within ``budget``
    bytes, but at least ``least`` (the source's stored chunk: ``Source.block_rows``) and one; None for
    a tensor that is not a stack (moved whole)."""
    if op.blocks == 1 or meta.dim() == 0 or meta.shape[0] == 0:
        return None
    row = meta[0].numel() * meta.element_size()
    return min(meta.shape[0], max(1, least, budget // max(1, row)))


def row_blocks(n: int, rows: int) -> list[tuple[int, int]]:
    """``[start, stop)`` ranges of ``rows`` slices covering ``n``."""
    return [(a, min(a + rows, n)) for a in range(0, n, rows)]


def large_rows(meta: torch.Tensor, budget: int, least: int = 1) -> int | None:
    """Rows per block of a plain tensor larger than ``budget`` bytes (at least ``least``), None for a
    smaller one or when the blocks would be the whole tensor."""
    if meta.dim() == 0 or meta.shape[0] == 0 or meta.numel() * meta.element_size() <= budget:
        return None
    rows = max(1, least, budget // max(1, meta[0].numel() * meta.element_size()))
    return rows if rows < meta.shape[0] else None

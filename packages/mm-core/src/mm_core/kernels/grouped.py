"""Grouped GEMM reference (op ``grouped_mm``): one matrix product per expert over its rows.

Mixture-of-experts layers sort their (token, expert) pairs by expert and run every expert's rows
against that expert's weight. ``x`` ``[T, K]`` holds the rows of expert 0 first, then expert 1, ...
(``counts[e]`` rows each); ``weight`` ``[E, K, N]`` is stacked per expert. The reference loops over
the experts (exact: each expert's rows are one ordinary matmul); device kernels (``torch_npu``'s
grouped matmul on Ascend) take the same arguments and must give the same result.
"""

from __future__ import annotations

import torch


def grouped_mm(x: torch.Tensor, weight: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """``[T, K] x [E, K, N] -> [T, N]``; rows ``sum(counts[:e])..sum(counts[:e+1])`` use ``weight[e]``."""
    if weight.dim() != 3 or x.dim() != 2 or x.shape[1] != weight.shape[1]:
        raise ValueError(f"grouped_mm: x {tuple(x.shape)} and weight {tuple(weight.shape)} must be [T, K] and "
                         "[E, K, N]")
    sizes = [int(c) for c in counts.tolist()]
    if len(sizes) != weight.shape[0] or sum(sizes) != x.shape[0]:
        raise ValueError(f"grouped_mm: counts {sizes} must give one row count per expert ({weight.shape[0]}) "
                         f"summing to the {x.shape[0]} rows of x")
    parts = [rows @ weight[e] for e, rows in enumerate(x.split(sizes)) if sizes[e]]
    if not parts:
        return x.new_zeros(0, weight.shape[2])
    return torch.cat(parts)

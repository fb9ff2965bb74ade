"""Ascend NPU grouped GEMM for GLM-4.5V's routed experts (op ``grouped_mm``, device ``npu`` only).

Same arguments and result as the reference twin ``mm_core.kernels.grouped.grouped_mm``: rows of
``x`` sorted by expert, ``counts[e]`` rows for expert ``e``, weights stacked ``[E, K, N]``.
``torch_npu.npu_grouped_matmul`` takes the cumulative row counts (``group_list_type=0``), splits
``x`` along its rows (``group_type=0``) and returns one output tensor (``split_item=2``).
``torch_npu`` is imported inside the call (mm-core's NPU module), never at import time.
"""

from __future__ import annotations

import torch

from mm_core.kernels.npu import _torch_npu


def grouped_mm(x: torch.Tensor, weight: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """``[T, K] x [E, K, N] -> [T, N]`` with expert ``e`` on its ``counts[e]`` rows."""
    group_list = torch.cumsum(counts.to(torch.int64), dim=0)
    (out,) = _torch_npu().npu_grouped_matmul([x], [weight], group_list=group_list, split_item=2, group_type=0,
                                             group_list_type=0)
    return out

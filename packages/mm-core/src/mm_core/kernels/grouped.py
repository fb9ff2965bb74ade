"""Grouped GEMM (op ``grouped_mm``): one matrix product per expert over its rows.

Mixture-of-experts layers sort their (token, expert) pairs by expert and run every expert's rows
against that expert's weight. ``x`` ``[T, K]`` holds the rows of expert 0 first, then expert 1, ...
(``counts[e]`` rows each); ``weight`` ``[E, K, N]`` is stacked per expert. The reference loops over
the experts (exact: each expert's rows are one ordinary matmul); device kernels (``torch_npu``'s
grouped matmul on Ascend, registered by mm-glm) take the same arguments and must give the same result.

``torch._grouped_mm`` runs all experts in one call, without the loop's host sync on the counts
(``native_available`` probes whether this torch runs it on the device). Its rules (torch 2.14: its
meta kernel in ``torch/_meta_registrations.py`` and ``torch.nn.functional.grouped_mm``'s docs):
offsets are the cumulative counts as int32; each operand's last two dimensions are row- or
column-major (a transposed weight is fine) with the other stride a multiple of 16 bytes and the
data on a 16-byte boundary; K and N not 0; fewer than 1024 groups for the bf16 CUDA kernel (SM 8.0+);
the result has the inputs' dtype. On CUDA its fast (CUTLASS) path is
bf16, so :func:`cuda_grouped_mm` takes it for bf16 and leaves other dtypes to the loop (cuBLAS,
with the model's TF32 setting). On CPU it is a loop of the same matmuls inside ATen: bit-exact
with the reference in fp32 and bf16, forward and backward, and about 2x faster for a layer's
forward and backward (no Python loop, no per-expert slicing), so :func:`cpu_grouped_mm` takes it
wherever the rules hold; only bf16 and fp16 have a meta kernel, so an fp32 call under
``torch.compile`` keeps the loop. Its backward rejects a gradient with zero strides (what
``out.sum()`` sends), so the gradient is made contiguous first.
"""

from __future__ import annotations

import functools

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
    if not parts:  # no rows: still on the graph (x and weight get zero gradients), as the rows' case is
        return x @ weight[0]
    return torch.cat(parts)


def _layout_ok(t: torch.Tensor) -> bool:
    """``torch._grouped_mm``'s stride rule for one operand (its last two dimensions) and alignment."""
    align = 16 // t.element_size()
    rows, cols = t.shape[-2:]
    s_row, s_col = t.stride()[-2:]
    if t.data_ptr() % 16:
        return False
    if s_col == 1 and s_row >= max(1, cols):  # row-major
        return s_row % align == 0
    if s_row == 1 and s_col >= max(1, rows):  # column-major (a transposed weight)
        return s_col % align == 0
    return False


class _ContiguousGrad(torch.autograd.Function):
    """Identity whose backward hands on a contiguous gradient (``torch._grouped_mm``'s backward
    refuses an expanded one)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # noqa: ANN001 - autograd ctx
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # noqa: ANN001 - autograd ctx
        return grad.contiguous()


def _native_fits(x: torch.Tensor, weight: torch.Tensor, counts: torch.Tensor) -> bool:
    """Shapes, dtype and layout ``torch._grouped_mm`` takes (its bf16 CUDA kernel: fewer than 1024
    groups, K and N not 0)."""
    return (hasattr(torch, "_grouped_mm") and x.dim() == 2 and weight.dim() == 3 and x.shape[0] > 0
            and 0 < weight.shape[0] < 1024 and min(weight.shape[1:]) > 0 and x.shape[1] == weight.shape[1] and counts.numel() == weight.shape[0] and x.dtype == weight.dtype
            and x.device == weight.device and _layout_ok(x) and _layout_ok(weight)
            and weight.shape[2] * x.element_size() % 16 == 0)  # the result's rows on 16 bytes too


def _native(x: torch.Tensor, weight: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    offs = torch.cumsum(counts.to(device=x.device), 0, dtype=torch.int32)
    return _ContiguousGrad.apply(torch._grouped_mm(x, weight, offs=offs))


def cuda_grouped_mm(x: torch.Tensor, weight: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """The ``cuda`` kernel: ``torch._grouped_mm`` for bf16 operands that fit its layout rules, else the loop."""
    if x.dtype == torch.bfloat16 and _native_fits(x, weight, counts):
        return _native(x, weight, counts)
    return grouped_mm(x, weight, counts)


def cpu_grouped_mm(x: torch.Tensor, weight: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """The ``cpu`` kernel: ``torch._grouped_mm`` (exact, faster) where it applies, else the loop."""
    dtypes = (torch.bfloat16,) if torch.compiler.is_compiling() else (torch.float32, torch.bfloat16)
    if x.dtype in dtypes and _native_fits(x, weight, counts):
        return _native(x, weight, counts)
    return grouped_mm(x, weight, counts)


@functools.cache
def native_available(device_type: str) -> bool:
    """This torch has ``torch._grouped_mm`` and it runs on ``device_type`` (a tiny call, once)."""
    if not hasattr(torch, "_grouped_mm") or (device_type == "cuda" and not torch.cuda.is_available()):
        return False
    dtype = torch.bfloat16 if device_type == "cuda" else torch.float32
    x = torch.ones(8, 8, dtype=dtype, device=device_type)
    w = torch.ones(2, 8, 8, dtype=dtype, device=device_type)
    counts = torch.tensor([3, 5], device=device_type)
    try:
        return bool(torch.equal(_native(x, w, counts), grouped_mm(x, w, counts)))
    except (RuntimeError, NotImplementedError):
        return False

"""Norm, MLP, rotary and attention wrappers over ``mm_core.kernels.get_kernel``.

Parameter names follow the mm (Megatron-style) layout: ``weight`` for norms, ``linear_fc1`` (fused
``[gate; up]``) and ``linear_fc2`` for gated MLPs, so checkpoints load without renaming.
"""

from __future__ import annotations

import torch
from torch import nn

from mm_core.kernels import get_kernel


class RMSNorm(nn.Module):
    """RMSNorm whose math comes from the kernel registry (fp32 inside, like HF's Qwen2/GLM)."""

    def __init__(self, dim: int, eps: float = 1e-6, *, device=None, dtype=None):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return get_kernel("rms_norm", x.device.type)(x, self.weight, self.eps)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


class SwiGLUMLP(nn.Module):
    """``linear_fc2(silu(gate) * up)`` with one fused ``linear_fc1`` producing ``[gate; up]``.

    Under tensor parallelism a rank's ``linear_fc1`` holds ``[gate_r; up_r]`` (mm-format's gated
    column split), so the kernel's ``chunk(2)`` of the local output is still (gate, up).
    """

    def __init__(self, hidden: int, intermediate: int, *, bias: bool, device=None, dtype=None):
        super().__init__()
        self.linear_fc1 = nn.Linear(hidden, 2 * intermediate, bias=bias, device=device, dtype=dtype)
        self.linear_fc2 = nn.Linear(intermediate, hidden, bias=bias, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_fc2(get_kernel("swiglu", x.device.type)(self.linear_fc1(x)))


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding (rotate-half convention) through the registry's ``rotary`` kernel."""
    return get_kernel("rotary", x.device.type)(x, cos, sin)


def apply_rotary_interleaved(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding on interleaved channel pairs (GLM-4) through the registry's ``rotary_interleaved``
    kernel; partial when ``cos`` is narrower than ``x``."""
    return get_kernel("rotary_interleaved", x.device.type)(x, cos, sin)


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool,
    segment_ids: torch.Tensor | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """``[B, H, T, D]`` attention through the registry; ``segment_ids`` keeps packed samples apart."""
    return get_kernel("attention", q.device.type)(q, k, v, causal=causal, segment_ids=segment_ids, scale=scale)

"""LayerNorm transformer pieces VisualGLM's three towers share (EVA ViT, Q-Former, ChatGLM).

All linears carry biases; MLPs are ``linear_fc2(gelu(linear_fc1(x)))`` (exact GELU in the image
encoder, tanh GELU in ChatGLM). The fused ``linear_qkv`` of the ViT and Q-Former is ``[Q; K; V]``
(SAT's contiguous thirds, kept in mm so a tensor-parallel rank takes whole heads of each third).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mm_core.nn import attention


class GeluMLP(nn.Module):
    def __init__(self, hidden: int, inner: int, *, approximate: str = "none", device=None, dtype=None):
        super().__init__()
        self.approximate = approximate
        self.linear_fc1 = nn.Linear(hidden, inner, device=device, dtype=dtype)
        self.linear_fc2 = nn.Linear(inner, hidden, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_fc2(F.gelu(self.linear_fc1(x), approximate=self.approximate))


def heads(x: torch.Tensor, head_dim: int) -> torch.Tensor:
    """``[B, T, H * D]`` -> ``[B, H, T, D]``."""
    b, t = x.shape[:2]
    return x.view(b, t, -1, head_dim).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """``[B, H, T, D]`` -> ``[B, T, H * D]``."""
    b, _, t, _ = x.shape
    return x.transpose(1, 2).reshape(b, t, -1)


class SelfAttention(nn.Module):
    """Bidirectional multi-head attention with a fused ``[Q; K; V]`` projection (bias) and output ``linear_proj``."""

    def __init__(self, hidden: int, num_heads: int, *, device=None, dtype=None):
        super().__init__()
        self.head_dim = hidden // num_heads
        self.linear_qkv = nn.Linear(hidden, 3 * hidden, device=device, dtype=dtype)
        self.linear_proj = nn.Linear(hidden, hidden, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = (heads(y, self.head_dim) for y in self.linear_qkv(x).chunk(3, dim=-1))
        return self.linear_proj(merge_heads(attention(q, k, v, causal=False, scale=self.head_dim**-0.5)))


class CrossAttention(nn.Module):
    """Queries attend to encoder states: ``linear_q``, fused ``linear_kv`` ``[K; V]`` (from the encoder width)."""

    def __init__(self, hidden: int, num_heads: int, encoder_width: int, *, device=None, dtype=None):
        super().__init__()
        self.head_dim = hidden // num_heads
        self.linear_q = nn.Linear(hidden, hidden, device=device, dtype=dtype)
        self.linear_kv = nn.Linear(encoder_width, 2 * hidden, device=device, dtype=dtype)
        self.linear_proj = nn.Linear(hidden, hidden, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor, encoder: torch.Tensor) -> torch.Tensor:
        q = heads(self.linear_q(x), self.head_dim)
        k, v = (heads(y, self.head_dim) for y in self.linear_kv(encoder).chunk(2, dim=-1))
        return self.linear_proj(merge_heads(attention(q, k, v, causal=False, scale=self.head_dim**-0.5)))

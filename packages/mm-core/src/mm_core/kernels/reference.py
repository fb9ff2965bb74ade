"""Plain-PyTorch reference kernels: portable, readable, and the ground truth for tests."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm computed in fp32 and cast back, as the HF Qwen2/GLM models do."""
    dtype = x.dtype
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(dtype)


def swiglu(gate_up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up for a fused ``[gate; up]`` projection output (last dim 2 * I)."""
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Apply rotary embedding (rotate-half convention) to the first ``cos.shape[-1]`` channels.

    ``x`` is ``[..., T, D]``-shaped with ``cos``/``sin`` broadcastable to ``[..., T, d]``, ``d <= D``;
    channels past ``d`` pass through (partial rotary). Computed in fp32.
    """
    d = cos.shape[-1]
    dtype = x.dtype
    rot, rest = x[..., :d].float(), x[..., d:]
    out = rot * cos.float() + _rotate_half(rot) * sin.float()
    return torch.cat((out.to(dtype), rest), dim=-1) if rest.shape[-1] else out.to(dtype)


def _rotate_pairs(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack((-x2, x1), dim=-1).flatten(-2)


def rotary_interleaved(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding on interleaved pairs (channels ``2i``, ``2i+1`` rotate together; GLM-4, GPT-J)
    over the first ``cos.shape[-1]`` channels; the rest pass through (partial rotary).

    ``cos``/``sin`` hold each pair's angle twice in a row (``[c0, c0, c1, c1, ...]``), as
    transformers' GLM-4 builds them. Computed in fp32.
    """
    d = cos.shape[-1]
    dtype = x.dtype
    rot, rest = x[..., :d].float(), x[..., d:]
    out = rot * cos.float() + _rotate_pairs(rot) * sin.float()
    return torch.cat((out.to(dtype), rest), dim=-1) if rest.shape[-1] else out.to(dtype)


def rotary_cos_sin(positions: torch.Tensor, dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables ``[..., T, dim]`` for integer positions ``[..., T]`` (1-D rotary)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float32, device=positions.device) / dim))
    freqs = positions.float().unsqueeze(-1) * inv_freq
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


def mrope_cos_sin(
    positions: torch.Tensor, dim: int, theta: float, sections: list[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Multimodal rotary tables: positions ``[3, B, T]`` (temporal, height, width).

    The ``dim/2`` frequencies are cut into ``sections`` (e.g. [16, 24, 24]); section i takes its
    angle from position axis i. Returns ``[B, T, dim]`` tables.
    """
    cos, sin = rotary_cos_sin(positions, dim, theta)  # [3, B, T, dim]
    split = list(sections) * 2
    cos = torch.cat([c[i % 3] for i, c in enumerate(cos.split(split, dim=-1))], dim=-1)
    sin = torch.cat([s[i % 3] for i, s in enumerate(sin.split(split, dim=-1))], dim=-1)
    return cos, sin


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool,
    segment_ids: torch.Tensor | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """Scaled dot-product attention on ``[B, H, T, D]`` tensors, GQA by repeating k/v heads.

    ``segment_ids`` ``[B, T]`` marks packed samples (or vision windows): a token attends only to
    tokens with the same id, so packed samples never see each other; id -1 marks padding.
    """
    if k.shape[1] != q.shape[1]:
        rep = q.shape[1] // k.shape[1]
        k = k.repeat_interleave(rep, dim=1)
        v = v.repeat_interleave(rep, dim=1)
    if segment_ids is None:
        is_causal = causal
        if causal and q.shape[2] == 1:  # one new token against a cache sees every key (a branch, so
            is_causal = False           # torch.compile guards on it instead of passing a symbolic bool)
        return F.scaled_dot_product_attention(q, k, v, is_causal=is_causal, scale=scale)
    tq, tk = q.shape[2], k.shape[2]
    seg_q = segment_ids[:, -tq:] if segment_ids.shape[1] != tq else segment_ids
    seg_k = segment_ids[:, -tk:]
    mask = seg_q.unsqueeze(-1) == seg_k.unsqueeze(-2)  # [B, Tq, Tk]
    if causal:
        mask = mask & torch.ones(tq, tk, dtype=torch.bool, device=q.device).tril(tk - tq)
    # a fully masked row (padding) would give NaN: let it attend everywhere; its output is unused
    mask = mask | ~mask.any(-1, keepdim=True)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask.unsqueeze(1), scale=scale)

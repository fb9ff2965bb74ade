"""ChatGLM-6B (VisualGLM's language model) in mm names.

- layer (DeepNorm-like residuals, alpha = sqrt(2 x layers)): ``a = ln_in(x); h = a * alpha + attn(a);
  m = ln_post(h); out = m * alpha + mlp(m)``; LayerNorm, biased linears, tanh GELU;
- attention: fused ``linear_qkv`` whose rows are ``[Q; K; V]`` thirds (SAT's order; HF's per-head rows
  are converted, see ``convert.py``), 2-D rotary: the
  first half of each head rotates (rotate-half) with the position, the second with the block position;
  a prefix-LM mask (every token sees the whole context before ``<sop>``; causal from ``<sop>`` on);
- the final LayerNorm and an untied ``output_layer`` (``lm_head``).

The mask is ``attention`` with an explicit boolean mask (the kernel registry's attention knows
causal and segment masks only); packed samples and padding are kept apart by ``segment_ids``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mm_core.nn import KVCache, apply_rotary
from mm_visualglm.blocks import GeluMLP, merge_heads
from mm_visualglm.config import ChatGLMConfig


def prefix_lm_mask(context: torch.Tensor, segment_ids: torch.Tensor | None, kv_len: int) -> torch.Tensor:
    """``[B, 1, Tq, Tk]`` True = attend. ``context`` ``[B, Tq]``: the new tokens that belong to a prompt
    (seen by every token of their sample); keys before the new tokens (a cache) are all earlier."""
    b, tq = context.shape
    offset = kv_len - tq
    ctx = torch.cat([context.new_zeros(b, offset), context], dim=1) if offset else context
    mask = torch.ones(tq, kv_len, dtype=torch.bool, device=context.device).tril(offset).unsqueeze(0) | ctx[:, None, :]
    if segment_ids is not None:
        seg_k = segment_ids[:, -kv_len:]
        seg_q = seg_k[:, -tq:]
        mask = mask & (seg_q[:, :, None] == seg_k[:, None, :]) & (seg_k[:, None, :] >= 0)
        mask = mask | ~mask.any(-1, keepdim=True)  # padding rows attend somewhere (their output is unused)
    return mask.unsqueeze(1)


class GlmAttention(nn.Module):
    def __init__(self, cfg: ChatGLMConfig, *, device=None, dtype=None):
        super().__init__()
        self.head_dim = cfg.head_dim
        self.linear_qkv = nn.Linear(cfg.hidden_size, 3 * cfg.hidden_size, device=device, dtype=dtype)
        self.linear_proj = nn.Linear(cfg.hidden_size, cfg.hidden_size, device=device, dtype=dtype)

    def rotate(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """Position half and block-position half; ``cos``/``sin`` hold both halves' tables side by side."""
        half = self.head_dim // 2
        return torch.cat([apply_rotary(x[..., :half], cos[..., :half], sin[..., :half]),
                          apply_rotary(x[..., half:], cos[..., half:], sin[..., half:])], dim=-1)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor,
                cache: KVCache | None, layer: int) -> torch.Tensor:
        b, t = x.shape[:2]
        q, k, v = (y.view(b, t, -1, self.head_dim).transpose(1, 2)  # this rank's heads of each third
                   for y in self.linear_qkv(x).chunk(3, dim=-1))
        q, k = self.rotate(q, cos, sin), self.rotate(k, cos, sin)
        if cache is not None:
            k, v = cache.update(layer, k, v)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.head_dim**-0.5)
        return self.linear_proj(merge_heads(out))


class GlmLayer(nn.Module):
    def __init__(self, cfg: ChatGLMConfig, *, device=None, dtype=None):
        super().__init__()
        self.alpha = cfg.alpha
        self.input_layernorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.eps, device=device, dtype=dtype)
        self.self_attention = GlmAttention(cfg, device=device, dtype=dtype)
        self.pre_mlp_layernorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.eps, device=device, dtype=dtype)
        self.mlp = GeluMLP(cfg.hidden_size, cfg.intermediate_size, approximate="tanh", device=device, dtype=dtype)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor,
                cache: KVCache | None, layer: int) -> torch.Tensor:
        a = self.input_layernorm(x)
        h = a * self.alpha + self.self_attention(a, cos, sin, mask, cache, layer)
        m = self.pre_mlp_layernorm(h)
        return m * self.alpha + self.mlp(m)


class Decoder(nn.Module):
    def __init__(self, cfg: ChatGLMConfig, count: int, with_final_norm: bool, *, device=None, dtype=None):
        super().__init__()
        self.layers = nn.ModuleList(GlmLayer(cfg, device=device, dtype=dtype) for _ in range(count))
        if with_final_norm:
            self.final_layernorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.eps, device=device, dtype=dtype)


class Embedding(nn.Module):
    def __init__(self, cfg: ChatGLMConfig, *, device=None, dtype=None):
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size, device=device, dtype=dtype)


class ChatGLMDecoder(nn.Module):
    """``text_decoder``: embedding (first LLM stage), this stage's layers, final norm + ``output_layer`` (last).

    ``forward(hidden, cos, sin, segment_ids, cache)`` as the stage model calls the shared decoder; the
    stage model sets ``_context`` (which input tokens are prompt tokens, ``[B, T]``) for the call.
    """

    def __init__(self, cfg: ChatGLMConfig, count: int, *, with_embedding: bool, with_head: bool,
                 device=None, dtype=None):
        super().__init__()
        self.cfg = cfg
        if with_embedding:
            self.embedding = Embedding(cfg, device=device, dtype=dtype)
        self.decoder = Decoder(cfg, count, with_head, device=device, dtype=dtype)
        if with_head:
            self.output_layer = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False, device=device, dtype=dtype)
        self._context: torch.Tensor | None = None

    @property
    def has_head(self) -> bool:
        return hasattr(self, "output_layer")

    def output_weight(self) -> torch.Tensor:
        return self.output_layer.weight

    def forward(self, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, segment_ids: torch.Tensor | None,
                cache: KVCache | None = None, *, return_hidden: bool = False) -> torch.Tensor:
        context = self._context
        if context is None:
            context = torch.zeros(hidden.shape[:2], dtype=torch.bool, device=hidden.device)
        # with a cache the stage model has already appended this call's segment ids: they cover every key
        kv_len = segment_ids.shape[1] if cache is not None and segment_ids is not None else hidden.shape[1]
        mask = prefix_lm_mask(context, segment_ids, kv_len)
        for i, layer in enumerate(self.decoder.layers):
            hidden = layer(hidden, cos, sin, mask, cache, i)
        if not self.has_head:
            return hidden
        hidden = self.decoder.final_layernorm(hidden)
        return hidden if return_hidden else self.output_layer(hidden)

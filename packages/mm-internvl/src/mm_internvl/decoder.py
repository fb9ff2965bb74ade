"""The Qwen2 / Qwen2.5 text decoder of InternVL3 in the mm layout.

GQA attention with one fused ``linear_qkv`` (bias) whose rows are grouped per key/value head
``[q_g, k_g, v_g]`` (mm-format's group interleave, so a tensor-parallel rank holding whole groups
computes whole heads), SwiGLU MLP with fused ``[gate; up]``, RMSNorm, 1-D rotary.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mm_core.nn import RMSNorm, SwiGLUMLP, apply_rotary, attention
from mm_internvl.config import TextConfig


class DecoderAttention(nn.Module):
    def __init__(self, cfg: TextConfig, *, device=None, dtype=None):
        super().__init__()
        self.head_dim = cfg.head_dim
        self.q_per_group = cfg.num_heads // cfg.num_kv_heads
        out = (cfg.num_heads + 2 * cfg.num_kv_heads) * cfg.head_dim
        self.linear_qkv = nn.Linear(cfg.hidden_size, out, bias=True, device=device, dtype=dtype)
        self.linear_proj = nn.Linear(cfg.num_heads * cfg.head_dim, cfg.hidden_size, bias=False, device=device,
                                     dtype=dtype)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                segment_ids: torch.Tensor | None) -> torch.Tensor:
        qkv = self.linear_qkv(x)
        bsz, seqlen = qkv.shape[:2]
        qkv = qkv.view(bsz, seqlen, -1, self.q_per_group + 2, self.head_dim)  # this rank's groups
        q = qkv[:, :, :, : self.q_per_group].reshape(bsz, seqlen, -1, self.head_dim).transpose(1, 2)
        k = qkv[:, :, :, self.q_per_group].transpose(1, 2)
        v = qkv[:, :, :, self.q_per_group + 1].transpose(1, 2)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        out = attention(q, k, v, causal=True, segment_ids=segment_ids, scale=self.head_dim**-0.5)
        return self.linear_proj(out.transpose(1, 2).reshape(bsz, seqlen, -1))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: TextConfig, *, device=None, dtype=None):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, device=device, dtype=dtype)
        self.self_attention = DecoderAttention(cfg, device=device, dtype=dtype)
        self.pre_mlp_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, device=device, dtype=dtype)
        self.mlp = SwiGLUMLP(cfg.hidden_size, cfg.intermediate_size, bias=False, device=device, dtype=dtype)

    def forward(self, x, cos, sin, segment_ids):
        x = x + self.self_attention(self.input_layernorm(x), cos, sin, segment_ids)
        return x + self.mlp(self.pre_mlp_layernorm(x))


class Decoder(nn.Module):
    """``text_decoder.decoder``: this stage's layers (+ ``final_layernorm`` on the last LLM stage)."""

    def __init__(self, cfg: TextConfig, count: int, with_final_norm: bool, *, device=None, dtype=None):
        super().__init__()
        self.layers = nn.ModuleList(DecoderLayer(cfg, device=device, dtype=dtype) for _ in range(count))
        if with_final_norm:
            self.final_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, device=device, dtype=dtype)


class Embedding(nn.Module):
    def __init__(self, cfg: TextConfig, *, device=None, dtype=None):
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size, device=device, dtype=dtype)


class TextDecoder(nn.Module):
    """``text_decoder``: embedding (first LLM stage), layers, final norm and ``output_layer`` (last).

    Tied embeddings on a stage that holds both ends: no ``output_layer`` parameter; on a pipeline
    the last stage holds its own copy (the converter writes it, the engine keeps it in sync).
    """

    def __init__(self, cfg: TextConfig, count: int, *, with_embedding: bool, with_head: bool, tied: bool,
                 device=None, dtype=None):
        super().__init__()
        if with_embedding:
            self.embedding = Embedding(cfg, device=device, dtype=dtype)
        self.decoder = Decoder(cfg, count, with_head, device=device, dtype=dtype)
        if with_head and not (tied and with_embedding):
            self.output_layer = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False, device=device, dtype=dtype)

    @property
    def has_head(self) -> bool:
        return hasattr(self.decoder, "final_layernorm")

    def output_weight(self) -> torch.Tensor:
        """The ``[V, H]`` output projection (the embedding when tied on this stage)."""
        if hasattr(self, "output_layer"):
            return self.output_layer.weight
        return self.embedding.word_embeddings.weight

    def forward(self, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, segment_ids: torch.Tensor | None,
                *, return_hidden: bool = False) -> torch.Tensor:
        for layer in self.decoder.layers:
            hidden = layer(hidden, cos, sin, segment_ids)
        if not self.has_head:
            return hidden
        hidden = self.decoder.final_layernorm(hidden)
        if return_hidden:
            return hidden
        if hasattr(self, "output_layer"):
            return self.output_layer(hidden)
        weight = self.output_weight()
        if hasattr(weight, "device_mesh"):  # tied to a vocab-parallel embedding: gather the vocab shards
            from torch.distributed.tensor import DTensor, Shard

            if isinstance(hidden, DTensor):
                hidden = hidden.full_tensor()
            local = F.linear(hidden, weight.to_local())
            return DTensor.from_local(local, weight.device_mesh, [Shard(-1)]).full_tensor()
        return F.linear(hidden, weight)

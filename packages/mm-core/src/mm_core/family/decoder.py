"""The Qwen2-style text decoder that several families share (Qwen2.5-VL, InternVL3), in mm names.

GQA attention with one fused ``linear_qkv`` (bias) whose rows are grouped per key/value head
``[q_g, k_g, v_g]`` (mm-format's group interleave, so a tensor-parallel rank holding whole groups
computes whole heads), SwiGLU MLP with fused ``[gate; up]``, RMSNorm. Rotary-agnostic: each family
computes its own ``cos``/``sin`` (1-D, multimodal, ...) and passes them in; a table narrower than
``head_dim`` rotates only the first channels (partial rotary). Two options cover GLM-4-style layers:
``rotary_interleaved`` (channel pairs ``2i, 2i+1`` rotate together instead of rotate-half) and
``sandwich_norms`` (RMSNorms on the attention and MLP outputs too, before each residual add). Parameter names
(``text_decoder.embedding.word_embeddings``, ``...decoder.layers.N.self_attention.linear_qkv``, ...)
are what checkpoints, converter rules and tensor-parallel plans are written against.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mm_core.errors import ConfigError
from mm_core.nn import KVCache, RMSNorm, SwiGLUMLP, apply_rotary, apply_rotary_interleaved, attention
from mm_core.nn.vocab_padding import padding_of


@dataclass(frozen=True)
class DecoderConfig:
    """The sizes of a Qwen2-style decoder; ``rope_theta`` is for the family's rotary, not used here.

    ``rotary_interleaved``: rotate interleaved channel pairs (GLM-4) instead of halves (Qwen2).
    ``sandwich_norms``: ``post_self_attn_layernorm`` / ``post_mlp_layernorm`` on the sublayer outputs.
    """

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    rotary_interleaved: bool = False
    sandwich_norms: bool = False


def decoder_config_from_hf(text: Any, source: str, field: str = "text_config") -> dict[str, Any]:
    """The :class:`DecoderConfig` fields of a transformers Qwen2-style text config object, checked;
    a dict so that a family config subclassing DecoderConfig can add its own fields."""
    if text.num_attention_heads % text.num_key_value_heads:
        raise ConfigError(f"{source}: {field}.num_attention_heads ({text.num_attention_heads}) must be a multiple "
                          f"of num_key_value_heads ({text.num_key_value_heads})")
    rope = dict(getattr(text, "rope_parameters", None) or {})
    head_dim = int(getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads)
    return dict(vocab_size=int(text.vocab_size), hidden_size=int(text.hidden_size),
                intermediate_size=int(text.intermediate_size), num_layers=int(text.num_hidden_layers),
                num_heads=int(text.num_attention_heads), num_kv_heads=int(text.num_key_value_heads),
                head_dim=head_dim, rms_norm_eps=float(text.rms_norm_eps),
                rope_theta=float(rope.get("rope_theta", 1e6)))


class DecoderAttention(nn.Module):
    # set by the engine under context parallel (mm_core.engine.context_parallel): this rank holds
    # two chunks of the sequence and attends to every rank's keys
    context_parallel: Any = None

    def __init__(self, cfg: DecoderConfig, *, device=None, dtype=None):
        super().__init__()
        self.head_dim = cfg.head_dim
        self.q_per_group = cfg.num_heads // cfg.num_kv_heads
        self.rotate = apply_rotary_interleaved if cfg.rotary_interleaved else apply_rotary
        out = (cfg.num_heads + 2 * cfg.num_kv_heads) * cfg.head_dim
        self.linear_qkv = nn.Linear(cfg.hidden_size, out, bias=True, device=device, dtype=dtype)
        self.linear_proj = nn.Linear(cfg.num_heads * cfg.head_dim, cfg.hidden_size, bias=False, device=device,
                                     dtype=dtype)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, segment_ids: torch.Tensor | None,
                cache: KVCache | None, layer: int) -> torch.Tensor:
        qkv = self.linear_qkv(x)  # under sequence parallel: the whole sequence, gathered from x's shard
        bsz, seqlen = qkv.shape[:2]
        qkv = qkv.view(bsz, seqlen, -1, self.q_per_group + 2, self.head_dim)  # this rank's groups
        q = qkv[:, :, :, : self.q_per_group].reshape(bsz, seqlen, -1, self.head_dim).transpose(1, 2)
        k = qkv[:, :, :, self.q_per_group].transpose(1, 2)
        v = qkv[:, :, :, self.q_per_group + 1].transpose(1, 2)
        q = self.rotate(q, cos, sin)
        k = self.rotate(k, cos, sin)
        if cache is not None:
            k, v = cache.update(layer, k, v)
        if self.context_parallel is not None and cache is None:
            out = self.context_parallel.attention(q, k, v, segment_ids, self.head_dim**-0.5)
        else:
            out = attention(q, k, v, causal=True, segment_ids=segment_ids, scale=self.head_dim**-0.5)
        return self.linear_proj(out.transpose(1, 2).reshape(bsz, seqlen, -1))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: DecoderConfig, *, device=None, dtype=None):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, device=device, dtype=dtype)
        self.self_attention = DecoderAttention(cfg, device=device, dtype=dtype)
        self.pre_mlp_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, device=device, dtype=dtype)
        self.mlp = SwiGLUMLP(cfg.hidden_size, cfg.intermediate_size, bias=False, device=device, dtype=dtype)
        if cfg.sandwich_norms:
            self.post_self_attn_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, device=device, dtype=dtype)
            self.post_mlp_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, device=device, dtype=dtype)
        self.sandwich = cfg.sandwich_norms

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, segment_ids: torch.Tensor | None,
                cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        attn = self.self_attention(self.input_layernorm(x), cos, sin, segment_ids, cache, layer)
        x = x + (self.post_self_attn_layernorm(attn) if self.sandwich else attn)
        mlp = self.mlp(self.pre_mlp_layernorm(x))
        return x + (self.post_mlp_layernorm(mlp) if self.sandwich else mlp)


class Decoder(nn.Module):
    """``text_decoder.decoder``: this stage's layers (+ ``final_layernorm`` on the last LLM stage)."""

    def __init__(self, cfg: DecoderConfig, count: int, with_final_norm: bool, *, device=None, dtype=None):
        super().__init__()
        self.layers = nn.ModuleList(DecoderLayer(cfg, device=device, dtype=dtype) for _ in range(count))
        if with_final_norm:
            self.final_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, device=device, dtype=dtype)


class Embedding(nn.Module):
    def __init__(self, cfg: DecoderConfig, *, device=None, dtype=None):
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size, device=device, dtype=dtype)


class TextDecoder(nn.Module):
    """``text_decoder``: embedding (first LLM stage), layers, final norm and ``output_layer`` (last).

    With tied word embeddings and the embedding on the same stage as the head, there is no
    ``output_layer`` parameter (HF and Megatron alike); on a pipeline the last stage holds its own
    copy (the converter writes it, the engine keeps it in sync with the embedding's gradient).
    ``forward`` takes ``(hidden, cos, sin, segment_ids, cache)`` positionally: tensor-parallel
    plans (sequence parallel) prepare exactly these inputs.
    """

    def __init__(self, cfg: DecoderConfig, count: int, *, with_embedding: bool, with_head: bool, tied: bool,
                 device=None, dtype=None):
        super().__init__()
        self.cfg = cfg
        if with_embedding:
            self.embedding = Embedding(cfg, device=device, dtype=dtype)
        self.decoder = Decoder(cfg, count, with_head, device=device, dtype=dtype)
        if with_head and not (tied and with_embedding):
            self.output_layer = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False, device=device, dtype=dtype)

    @property
    def has_embedding(self) -> bool:
        return hasattr(self, "embedding")

    @property
    def has_head(self) -> bool:
        return hasattr(self.decoder, "final_layernorm")

    def output_weight(self) -> torch.Tensor:
        """The ``[V, H]`` output projection (the embedding when tied on this stage)."""
        if hasattr(self, "output_layer"):
            return self.output_layer.weight
        return self.embedding.word_embeddings.weight

    def forward(self, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, segment_ids: torch.Tensor | None,
                cache: KVCache | None = None, *, return_hidden: bool = False) -> torch.Tensor:
        for i, layer in enumerate(self.decoder.layers):
            hidden = layer(hidden, cos, sin, segment_ids, cache, i)
        if not self.has_head:
            return hidden
        hidden = self.decoder.final_layernorm(hidden)
        if return_hidden:
            return hidden
        if hasattr(self, "output_layer"):
            return self.output_layer(hidden)
        logits = tied_logits(hidden, self.output_weight())
        padding = padding_of(self.embedding.word_embeddings)  # a padded vocabulary under tensor parallel
        return padding.unpad(logits, dim=-1) if padding is not None else logits


def tied_logits(hidden: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``hidden @ weight.T`` for a head tied to the word embedding, which under tensor parallel is
    a vocab-parallel DTensor: each rank projects onto its vocabulary rows, then the shards are
    gathered (a plain tensor otherwise)."""
    if not hasattr(weight, "device_mesh"):
        return F.linear(hidden, weight)
    from torch.distributed.tensor import DTensor, Shard

    if isinstance(hidden, DTensor):  # sequence parallel: the final norm's output is sequence-sharded
        hidden = hidden.full_tensor()
    local = F.linear(hidden, weight.to_local())
    shape = (*local.shape[:-1], weight.shape[0])  # uneven shards (torch.chunk) need the global size
    stride = torch.empty(shape, device="meta").stride()
    return DTensor.from_local(local, weight.device_mesh, [Shard(-1)], shape=shape, stride=stride).full_tensor()

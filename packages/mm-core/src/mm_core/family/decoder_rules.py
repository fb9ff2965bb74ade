"""The conversion rules of the shared Qwen2-style decoder (``mm_core.family.decoder``).

The decoder's mm names and splits are core's, so its rules are too: a family passes where its HF
checkpoint keeps the decoder (layer prefix, embedding, final norm, LM head) and appends the result
to its own vision rules. The order of the rules is the order tensors are written in.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mm_core.checkpoint.errors import ConfigError
from mm_core.checkpoint.ops import GATED_COLUMN, ROW, VOCAB, Concat, GroupInterleave, Split
from mm_core.checkpoint.rules import Rule

EMBEDDING = "text_decoder.embedding.word_embeddings.weight"
LAYER = "text_decoder.decoder.layers.{layer}."


def layer_rules(mm_prefix: str, hf_prefix: str, module: str) -> Callable[..., Rule]:
    """``make(mm_suffix, hf_suffix or suffixes, **rule options)``: per-layer rules under two prefixes
    (both holding ``{layer}``) of one pipeline module."""

    def make(mm: str, hf: str | tuple[str, ...], **kw: Any) -> Rule:
        return Rule(mm_prefix + mm, tuple(hf_prefix + h for h in ((hf,) if isinstance(hf, str) else hf)), module, **kw)

    return make


def decoder_rules(*, heads: int, kv_heads: int, head_dim: int, hf_layer: str, hf_embedding: str,
                  hf_final_norm: str, hf_lm_head: str, hf_gate_up: str | None = None,
                  sandwich_norms: bool = False) -> list[Rule]:
    """Embedding, per-layer q/k/v (interleaved per GQA group), o, ``[gate; up]``, down and norms,
    final norm, and the LM head (a copy of the embedding when the model ties them).

    ``hf_gate_up``: the HF layer suffix of an already fused ``[gate; up]`` weight (GLM-4:
    ``mlp.gate_up_proj.weight``) instead of separate ``gate_proj``/``up_proj``. ``sandwich_norms``:
    the layers' ``post_self_attn_layernorm``/``post_mlp_layernorm`` (same names on both sides).
    """
    qkv = GroupInterleave(groups=kv_heads, q_rows=head_dim * heads // kv_heads, kv_rows=head_dim)
    qkv_split = Split(dim=0, unit=head_dim * (heads // kv_heads + 2), what="num_key_value_heads")
    llm = layer_rules(LAYER, hf_layer, "llm")
    rules = [Rule(EMBEDDING, (hf_embedding,), "llm", place="first", tp=VOCAB)]
    rules += [llm(f"self_attention.linear_qkv.{p}", tuple(f"self_attn.{x}_proj.{p}" for x in "qkv"), op=qkv,
                  tp=qkv_split) for p in ("weight", "bias")]
    return rules + [
        llm("self_attention.linear_proj.weight", "self_attn.o_proj.weight", tp=ROW),
        llm("mlp.linear_fc1.weight", hf_gate_up, tp=GATED_COLUMN) if hf_gate_up else
        llm("mlp.linear_fc1.weight", ("mlp.gate_proj.weight", "mlp.up_proj.weight"), op=Concat(parts=2),
            tp=GATED_COLUMN),
        llm("mlp.linear_fc2.weight", "mlp.down_proj.weight", tp=ROW),
        llm("input_layernorm.weight", "input_layernorm.weight"),
        llm("pre_mlp_layernorm.weight", "post_attention_layernorm.weight"),
        *([llm(f"{n}.weight", f"{n}.weight") for n in ("post_self_attn_layernorm", "post_mlp_layernorm")]
          if sandwich_norms else []),
        Rule("text_decoder.decoder.final_layernorm.weight", (hf_final_norm,), "llm", place="last"),
        Rule("text_decoder.output_layer.weight", (hf_lm_head,), "llm", place="last", tp=VOCAB, tied_to=hf_embedding),
    ]


def check_decoder_tp(kv_heads: int, tp: int, field: str = "text_config.num_key_value_heads") -> None:
    """A tp rank holds whole GQA groups: tp must divide the key/value heads."""
    if kv_heads % tp:
        raise ConfigError(f"parallel_config.tp_size {tp} does not divide {field} {kv_heads} of config.json; "
                          f"choose a tp_size that divides {kv_heads}")

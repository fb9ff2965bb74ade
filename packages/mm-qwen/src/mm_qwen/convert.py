"""Qwen2.5-VL <-> mm: the rule table of mm-format.md on top of the mm-convert engine.

Vision QKV is stored ``[Q; K; V]`` by HF and interleaved per head in mm; the LLM's separate
q/k/v are interleaved per GQA group; gated MLPs concatenate ``[gate; up]``. The 3B model ties its
word embeddings (no ``lm_head`` in the files; the last pipeline stage gets a copy when it is not
the embedding's stage), the 7B and larger do not.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mm_convert.converter import Converter
from mm_core.checkpoint.errors import ConfigError
from mm_core.checkpoint.ops import (
    COLUMN,
    GATED_COLUMN,
    REPLICATED,
    ROW,
    Concat,
    HeadInterleave,
    Split,
)
from mm_core.checkpoint.rules import Rule
from mm_core.family.decoder_rules import check_decoder_tp, decoder_rules, layer_rules
from mm_core.family.hf_config import is_tied, text_config, vision_config
from mm_core.layout import Placement

VIT = "image_encoder.encoder.blocks.layers.{layer}."
HF_VIT = "visual.blocks.{layer}."
HF_LLM = "model.layers.{layer}."
EMBED = "model.embed_tokens.weight"


class Qwen2_5_VLConverter(Converter):
    """Qwen2.5-VL (3B tied, 7B/32B/72B untied): HF <-> mm (tp/pp) <-> DCP."""

    modules = ("vit", "llm")
    # transformers' in-memory names -> the names the Hub's files use
    hf_aliases = (("model.visual.", "visual."), ("model.language_model.", "model."))

    def depths(self, hf: Mapping[str, Any]) -> dict[str, int]:
        return {"vit": int(vision_config(hf)["depth"]), "llm": int(text_config(hf)["num_hidden_layers"])}

    def tied(self, hf: Mapping[str, Any]) -> bool:
        return is_tied(hf)

    def check(self, hf: Mapping[str, Any], placement: Placement) -> None:
        tp = placement.tp_size
        check_decoder_tp(int(text_config(hf).get("num_key_value_heads") or text_config(hf)["num_attention_heads"]), tp)
        vh = int(vision_config(hf)["num_heads"])
        if vh % tp:
            raise ConfigError(f"parallel_config.tp_size {tp} does not divide vision_config.num_heads {vh}")

    def rules(self, hf: Mapping[str, Any]) -> list[Rule]:
        t, v = text_config(hf), vision_config(hf)
        heads, kv = int(t["num_attention_heads"]), int(t.get("num_key_value_heads") or t["num_attention_heads"])
        hd = int(t.get("head_dim") or int(t["hidden_size"]) // heads)
        vheads = int(v["num_heads"])
        vhd = int(v["hidden_size"]) // vheads
        vqkv_split = Split(dim=0, unit=3 * vhd, what="vision_config.num_heads")
        gate_up = Concat(parts=2)

        vit = layer_rules(VIT, HF_VIT, "vit")
        rules = [Rule("image_encoder.encoder.patch_embed.proj.weight", ("visual.patch_embed.proj.weight",), "vit",
                      place="first")]
        rules += [
            vit("input_layernorm.weight", "norm1.weight"),
            vit("pre_mlp_layernorm.weight", "norm2.weight"),
            vit("self_attention.linear_proj.weight", "attn.proj.weight", tp=ROW),
            vit("self_attention.linear_proj.bias", "attn.proj.bias"),
            vit("mlp.linear_fc2.weight", "mlp.down_proj.weight", tp=ROW),
            vit("mlp.linear_fc2.bias", "mlp.down_proj.bias"),
        ]
        for p in ("weight", "bias"):
            rules.append(vit(f"self_attention.linear_qkv.{p}", f"attn.qkv.{p}", op=HeadInterleave(vheads, vhd),
                             tp=vqkv_split))
            rules.append(vit(f"mlp.linear_fc1.{p}", (f"mlp.gate_proj.{p}", f"mlp.up_proj.{p}"), op=gate_up,
                             tp=GATED_COLUMN))
        rules += [
            Rule("image_encoder.projector.layernorm.weight", ("visual.merger.ln_q.weight",), "vit", place="last"),
            Rule("image_encoder.projector.encoder.linear_fc1.weight", ("visual.merger.mlp.0.weight",), "vit",
                 place="last", tp=COLUMN),
            Rule("image_encoder.projector.encoder.linear_fc1.bias", ("visual.merger.mlp.0.bias",), "vit",
                 place="last", tp=COLUMN),
            Rule("image_encoder.projector.encoder.linear_fc2.weight", ("visual.merger.mlp.2.weight",), "vit",
                 place="last", tp=ROW),
            Rule("image_encoder.projector.encoder.linear_fc2.bias", ("visual.merger.mlp.2.bias",), "vit",
                 place="last", tp=REPLICATED),
        ]
        return rules + decoder_rules(heads=heads, kv_heads=kv, head_dim=hd, hf_layer=HF_LLM, hf_embedding=EMBED,
                                     hf_final_norm="model.norm.weight", hf_lm_head="lm_head.weight")

"""InternVL3 (``-hf`` layout) <-> mm: a declarative rule table on top of the mm-convert engine.

HF names are those transformers writes to disk (``vision_tower.*``, ``multi_modal_projector.*``,
``language_model.model.*``, ``language_model.lm_head.*``); the in-memory spellings
(``model.vision_tower.*``, ``model.language_model.*``, ``lm_head.*``) are read as aliases.

- ViT: q, k, v are concatenated ``[Q; K; V]`` (no interleave); a tp split takes whole heads of each
  and may be uneven (the first ``heads mod tp`` ranks get one head more).
- LLM: q/k/v interleaved per GQA group, ``[gate; up]`` fused, vocabulary split with the first
  ``V mod tp`` ranks taking one extra row (151674 divides by no common tp size).
- The original remote-code checkpoints (``vision_model.*``, ``mlp1.*``, fused ``attn.qkv``) differ in
  structure, not only in prefixes; they are not read here (use the ``-hf`` repositories).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mm_convert.converter import Converter
from mm_core.checkpoint.errors import ConfigError
from mm_core.checkpoint.ops import (
    COLUMN,
    REPLICATED,
    ROW,
    Concat,
    Split,
)
from mm_core.checkpoint.rules import Rule
from mm_core.family.decoder_rules import check_decoder_tp, decoder_rules, layer_rules
from mm_core.layout import Placement

VIT = "image_encoder.encoder.encoder.layers.{layer}."
HF_VIT = "vision_tower.encoder.layer.{layer}."
HF_LLM = "language_model.model.layers.{layer}."
EMBED = "language_model.model.embed_tokens.weight"
PROJ = "image_encoder.projector."
HF_PROJ = "multi_modal_projector."


def _parsed(hf: Mapping[str, Any]):
    from mm_core.errors import ConfigError as CoreConfigError
    from mm_internvl.config import parse_config

    try:
        return parse_config(dict(hf))
    except CoreConfigError as e:
        raise ConfigError(str(e)) from e


class InternVLConverter(Converter):
    """InternVL3 (Qwen2/2.5 LLM, InternViT-300M or -6B): HF <-> mm (tp/pp) <-> DCP."""

    modules = ("vit", "llm")
    hf_aliases = (("model.vision_tower.", "vision_tower."), ("model.multi_modal_projector.", "multi_modal_projector."),
                  ("model.language_model.", "language_model.model."), ("lm_head.", "language_model.lm_head."))

    def depths(self, hf: Mapping[str, Any]) -> dict[str, int]:
        cfg = _parsed(hf)
        return {"vit": cfg.vision.depth, "llm": cfg.text.num_layers}

    def tied(self, hf: Mapping[str, Any]) -> bool:
        return _parsed(hf).tie_word_embeddings

    def check(self, hf: Mapping[str, Any], placement: Placement) -> None:
        check_decoder_tp(_parsed(hf).text.num_kv_heads, placement.tp_size)

    def rules(self, hf: Mapping[str, Any]) -> list[Rule]:
        cfg = _parsed(hf)
        t, v = cfg.text, cfg.vision
        vqkv_split = Split(dim=0, parts=3, unit=v.head_dim, uneven=True, what="vision_config.num_attention_heads")

        vit = layer_rules(VIT, HF_VIT, "vit")
        emb = "image_encoder.encoder.embeddings."
        rules = [
            Rule(emb + "class_embedding", ("vision_tower.embeddings.cls_token",), "vit", place="first"),
            Rule(emb + "patch_embedding.weight", ("vision_tower.embeddings.patch_embeddings.projection.weight",), "vit",
                 place="first"),
            Rule(emb + "patch_embedding.bias", ("vision_tower.embeddings.patch_embeddings.projection.bias",), "vit",
                 place="first"),
            Rule(emb + "position_embedding", ("vision_tower.embeddings.position_embeddings",), "vit", place="first"),
        ]
        norm_params = ("weight",) if v.norm_type == "rms_norm" else ("weight", "bias")
        for p in norm_params:
            rules += [vit(f"input_layernorm.{p}", f"layernorm_before.{p}"),
                      vit(f"pre_mlp_layernorm.{p}", f"layernorm_after.{p}")]
        for p in ("weight", "bias") if v.qkv_bias else ("weight",):
            rules.append(vit(f"self_attention.linear_qkv.{p}", tuple(f"attention.{x}_proj.{p}" for x in "qkv"),
                             op=Concat(parts=3), tp=vqkv_split))
        if v.qk_norm:
            rules += [vit("self_attention.q_layernorm.weight", "attention.q_norm.weight"),
                      vit("self_attention.k_layernorm.weight", "attention.k_norm.weight")]
        rules += [
            vit("self_attention.linear_proj.weight", "attention.projection_layer.weight", tp=ROW),
            vit("self_attention.linear_proj.bias", "attention.projection_layer.bias"),
            vit("mlp.linear_fc1.weight", "mlp.fc1.weight", tp=COLUMN),
            vit("mlp.linear_fc1.bias", "mlp.fc1.bias", tp=COLUMN),
            vit("mlp.linear_fc2.weight", "mlp.fc2.weight", tp=ROW),
            vit("mlp.linear_fc2.bias", "mlp.fc2.bias"),
            vit("ls1", "lambda_1"),
            vit("ls2", "lambda_2"),
        ]
        if v.final_norm:
            rules += [Rule(f"image_encoder.encoder.final_layernorm.{p}", (f"vision_tower.layernorm.{p}",), "vit",
                           place="last") for p in ("weight", "bias")]
        rules += [
            Rule(PROJ + "norm.weight", (HF_PROJ + "layer_norm.weight",), "vit", place="last"),
            Rule(PROJ + "norm.bias", (HF_PROJ + "layer_norm.bias",), "vit", place="last"),
            Rule(PROJ + "linear_fc1.weight", (HF_PROJ + "linear_1.weight",), "vit", place="last", tp=COLUMN),
            Rule(PROJ + "linear_fc1.bias", (HF_PROJ + "linear_1.bias",), "vit", place="last", tp=COLUMN),
            Rule(PROJ + "linear_fc2.weight", (HF_PROJ + "linear_2.weight",), "vit", place="last", tp=ROW),
            Rule(PROJ + "linear_fc2.bias", (HF_PROJ + "linear_2.bias",), "vit", place="last", tp=REPLICATED),
        ]
        return rules + decoder_rules(heads=t.num_heads, kv_heads=t.num_kv_heads, head_dim=t.head_dim, hf_layer=HF_LLM,
                                     hf_embedding=EMBED, hf_final_norm="language_model.model.norm.weight",
                                     hf_lm_head="language_model.lm_head.weight")

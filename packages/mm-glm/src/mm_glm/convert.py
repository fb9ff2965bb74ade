"""GLM-4.1V <-> mm (``GlmConverter``): the rule table on top of the mm-convert engine, every verb.

mm names are the reference system's (MindSpeed-MM's GlmConverter), so its GLM checkpoints and ours
are interchangeable; unlike the reference, every verb and tensor parallel are supported.

- ViT: the fused ``attn.qkv`` stays ``[Q; K; V]`` (no interleave); a tp split takes whole heads of
  each third. The block MLP's ``gate_proj``/``up_proj`` fuse into ``linear_fc1`` (``[gate; up]``).
  Stem tensors (patch embed, ``post_conv_layernorm``, position table) go to the ViT's first stage,
  tail tensors (``blocks.final_layernorm``, ``downsample``, the merger) to its last.
- Merger: ``gate_proj``/``up_proj`` column-split, ``down_proj`` row-split; ``proj`` and its
  LayerNorm are replicated (the norm needs the whole vector).
- LLM: the shared decoder's rules with GLM-4's fused ``gate_up_proj`` (already ``[gate; up]`` on
  the Hub) and the sandwich norms.

Tensor parallel on the LLM: GLM-4.1V-9B has 2 key/value heads and a tp rank must hold whole GQA
groups, so ``tp_size`` must divide ``num_key_value_heads`` (tp 1 or 2 for the 9B). Replicating kv
heads for tp 4/8 is deliberately not done: it would change the checkpoint's shapes per rank and the
reference's layout; a larger tp is refused by name before anything is written.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mm_convert.converter import Converter
from mm_core.checkpoint.errors import ConfigError
from mm_core.checkpoint.ops import COLUMN, GATED_COLUMN, ROW, Concat, Split
from mm_core.checkpoint.rules import Rule
from mm_core.family.decoder_rules import check_decoder_tp, decoder_rules, layer_rules
from mm_core.layout import Placement

VIT = "image_encoder.encoder.blocks.layers.{layer}."
HF_VIT = "model.visual.blocks.{layer}."
HF_LLM = "model.language_model.layers.{layer}."
EMBED = "model.language_model.embed_tokens.weight"
ENC = "image_encoder.encoder."
HF_V = "model.visual."
PROJ = "image_encoder.projector."


def _parsed(hf: Mapping[str, Any]):
    from mm_core.errors import ConfigError as CoreConfigError
    from mm_glm.config import parse_config
    from mm_glm.moe_config import parse_moe_config

    try:
        return (parse_moe_config if hf.get("model_type") == "glm4v_moe" else parse_config)(dict(hf))
    except CoreConfigError as e:
        raise ConfigError(str(e)) from e


class GlmConverter(Converter):
    """GLM-4.1V (dense) and GLM-4.5V (MoE, ``model_type`` ``glm4v_moe``): HF <-> mm (tp/pp) <-> DCP."""

    modules = ("vit", "llm")  # HF names: model.visual.*, model.language_model.*, lm_head.* (Hub = transformers 5)

    def parse(self, hf: Mapping[str, Any]) -> Any:
        """The family config (``mm_glm.config.GlmConfig``) of an HF config dict."""
        return _parsed(hf)

    def depths(self, hf: Mapping[str, Any]) -> dict[str, int]:
        cfg = self.parse(hf)
        return {"vit": cfg.vision.depth, "llm": cfg.text.num_layers}

    def tied(self, hf: Mapping[str, Any]) -> bool:
        return self.parse(hf).tie_word_embeddings

    def check(self, hf: Mapping[str, Any], placement: Placement) -> None:
        cfg = self.parse(hf)
        tp = placement.tp_size
        check_decoder_tp(cfg.text.num_kv_heads, tp)
        if cfg.vision.num_heads % tp:
            raise ConfigError(f"parallel_config.tp_size {tp} does not divide vision_config.num_heads "
                              f"{cfg.vision.num_heads} of config.json; choose a tp_size that divides it")

    def rules(self, hf: Mapping[str, Any]) -> list[Rule]:
        cfg = self.parse(hf)
        t = cfg.text
        if getattr(t, "moe", None) is not None:
            from mm_glm.convert_moe import moe_text_rules

            return self.vision_rules(cfg) + moe_text_rules(t)
        return self.vision_rules(cfg) + decoder_rules(
            heads=t.num_heads, kv_heads=t.num_kv_heads, head_dim=t.head_dim, hf_layer=HF_LLM, hf_embedding=EMBED,
            hf_final_norm="model.language_model.norm.weight", hf_lm_head="lm_head.weight",
            hf_gate_up="mlp.gate_up_proj.weight", sandwich_norms=True)

    def vision_rules(self, cfg: Any) -> list[Rule]:
        """The ViT and merger (shared by GLM-4.1V and GLM-4.5V)."""
        v = cfg.vision
        vit = layer_rules(VIT, HF_VIT, "vit")
        qkv_split = Split(dim=0, parts=3, unit=v.head_dim, what="vision_config.num_heads")

        def first(mm: str, hf_key: str) -> Rule:
            return Rule(ENC + mm, (HF_V + hf_key,), "vit", place="first")

        def last(mm: str, hf_key: str, **kw: Any) -> Rule:
            return Rule(mm, (HF_V + hf_key,), "vit", place="last", **kw)

        rules = [
            first("patch_embed.proj.weight", "patch_embed.proj.weight"),
            first("patch_embed.proj.bias", "patch_embed.proj.bias"),
            first("post_conv_layernorm.weight", "post_conv_layernorm.weight"),
            first("embeddings.position_embedding.weight", "embeddings.position_embedding.weight"),
            vit("input_layernorm.weight", "norm1.weight"),
            vit("self_attention.qkv.weight", "attn.qkv.weight", tp=qkv_split),
        ]
        if v.attention_bias:
            rules.append(vit("self_attention.qkv.bias", "attn.qkv.bias", tp=qkv_split))
        rules += [
            vit("self_attention.proj.weight", "attn.proj.weight", tp=ROW),
            vit("pre_mlp_layernorm.weight", "norm2.weight"),
            vit("mlp.linear_fc1.weight", ("mlp.gate_proj.weight", "mlp.up_proj.weight"), op=Concat(parts=2),
                tp=GATED_COLUMN),
            vit("mlp.linear_fc2.weight", "mlp.down_proj.weight", tp=ROW),
            last(ENC + "blocks.final_layernorm.weight", "post_layernorm.weight"),
            last(ENC + "downsample.weight", "downsample.weight"),
            last(ENC + "downsample.bias", "downsample.bias"),
            last(PROJ + "proj.weight", "merger.proj.weight"),
            last(PROJ + "post_projection_norm.weight", "merger.post_projection_norm.weight"),
            last(PROJ + "post_projection_norm.bias", "merger.post_projection_norm.bias"),
            last(PROJ + "gate_proj.weight", "merger.gate_proj.weight", tp=COLUMN),
            last(PROJ + "up_proj.weight", "merger.up_proj.weight", tp=COLUMN),
            last(PROJ + "down_proj.weight", "merger.down_proj.weight", tp=ROW),
        ]
        return rules

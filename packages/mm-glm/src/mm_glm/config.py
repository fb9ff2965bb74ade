"""The numbers the mm GLM-4.1V modules need, read from an HF ``config.json``.

transformers' ``Glm4vConfig`` parses the file (its defaults and validation); what our modules do not
implement is refused by name. GLM-4 specifics checked here: the partial rotary (``partial_rotary_factor``
of ``head_dim``) whose half must equal the sum of ``mrope_section``; without the factor transformers
defaults to full rotary and its own forward fails (split sizes), so we say which key is missing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mm_core.errors import ConfigError
from mm_core.family.decoder import DecoderConfig, decoder_config_from_hf
from mm_core.family.hf_config import parse_with_transformers
from mm_core.family.vision_config import VisionTowerConfig


@dataclass(frozen=True)
class VisionConfig(VisionTowerConfig):
    """GLM ViT: ``intermediate_size`` is the merger's SwiGLU width; the blocks' MLP width is
    ``out_hidden_size`` (transformers' ``Glm4VisionMlp``)."""

    in_channels: int
    patch_size: int
    temporal_patch_size: int
    spatial_merge_size: int
    out_hidden_size: int
    image_size: int  # the learned position table covers (image_size / patch_size)**2 patches
    attention_bias: bool
    hidden_act: str
    eps: float
    rope_theta: float

    @property
    def position_side(self) -> int:
        return self.image_size // self.patch_size

    @property
    def patch_dim(self) -> int:
        return self.in_channels * self.temporal_patch_size * self.patch_size**2


@dataclass(frozen=True)
class TextConfig(DecoderConfig):
    """The shared decoder (interleaved partial rotary, sandwich norms) plus GLM's mRoPE split."""

    rotary_dim: int = 64
    mrope_section: tuple[int, ...] = (8, 12, 12)


@dataclass(frozen=True)
class GlmConfig:
    vision: VisionConfig
    text: TextConfig
    image_token_id: int
    video_token_id: int
    image_start_token_id: int
    image_end_token_id: int
    video_start_token_id: int
    video_end_token_id: int
    tie_word_embeddings: bool
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)


def _int(x: Any, source: str, name: str) -> int:
    if isinstance(x, (list, tuple)):
        if len(set(x)) != 1:
            raise ConfigError(f"{source}: vision_config.{name} {list(x)} must be one number (square patches)")
        x = x[0]
    return int(x)


def parse_config(hf_config: dict[str, Any] | str | Path) -> GlmConfig:
    """Parse an HF GLM-4.1V config (dict, file or directory) of ``model_type`` ``glm4v``."""
    cfg, raw, source = parse_with_transformers(
        hf_config, model_type="glm4v", config_class="Glm4vConfig", what="GLM-4.1V",
        refused={"glm4v_moe": "is GLM-4.5V (MoE); mm-glm's dense model reads 'glm4v' (GLM-4.1V) only"})
    return glm_config(cfg, raw, source, TextConfig, rotary_interleaved=True, sandwich_norms=True)


def glm_config(cfg: Any, raw: dict[str, Any], source: str, text_class: type[TextConfig], *,
               rotary_interleaved: bool, sandwich_norms: bool, **text_fields: Any) -> GlmConfig:
    """The :class:`GlmConfig` of a parsed transformers GLM-4.xV config (GLM-4.1V: interleaved rotary
    and sandwich norms; GLM-4.5V: neither, plus its MoE fields in ``text_fields``)."""
    v, t = cfg.vision_config, cfg.text_config
    text = decoder_config_from_hf(t, source)
    rope = dict(t.rope_parameters or {})
    if rope.get("rope_type", "default") != "default":
        raise ConfigError(f"{source}: text_config.rope_parameters.rope_type '{rope.get('rope_type')}' is not "
                          "supported (only 'default')")
    text["rope_theta"] = float(rope.get("rope_theta", 10000.0))
    factor = float(rope.get("partial_rotary_factor", 1.0))
    rotary_dim = int(text["head_dim"] * factor)
    section = tuple(int(x) for x in (rope.get("mrope_section") or (8, 12, 12)))
    if sum(section) * 2 != rotary_dim or len(section) != 3:
        hint = "" if "partial_rotary_factor" in rope else " (partial_rotary_factor is missing: GLM-4.1V and GLM-4.5V have 0.5)"
        raise ConfigError(f"{source}: text_config.rope_parameters.mrope_section {list(section)} must be 3 numbers "
                          f"summing to rotary_dim/2 = {rotary_dim // 2} (head_dim {text['head_dim']} x "
                          f"partial_rotary_factor {factor}){hint}")
    if t.hidden_act != "silu" or v.hidden_act != "silu":
        raise ConfigError(f"{source}: hidden_act '{t.hidden_act}' / vision_config.hidden_act '{v.hidden_act}': "
                          "only 'silu' is supported")
    if int(v.out_hidden_size) != text["hidden_size"]:
        raise ConfigError(f"{source}: vision_config.out_hidden_size {v.out_hidden_size} must equal text_config.hidden_size "
                          f"{text['hidden_size']} (the merger's output feeds the LLM)")
    vis_rope = dict(v.rope_parameters or {})
    return GlmConfig(
        vision=VisionConfig(
            depth=int(v.depth), hidden_size=int(v.hidden_size), intermediate_size=int(v.intermediate_size),
            num_heads=int(v.num_heads), in_channels=int(v.in_channels), patch_size=_int(v.patch_size, source, "patch_size"),
            temporal_patch_size=_int(v.temporal_patch_size, source, "temporal_patch_size"),
            spatial_merge_size=int(v.spatial_merge_size), out_hidden_size=int(v.out_hidden_size),
            image_size=_int(v.image_size, source, "image_size"), attention_bias=bool(v.attention_bias),
            hidden_act=v.hidden_act, eps=float(v.rms_norm_eps), rope_theta=float(vis_rope.get("rope_theta", 10000.0)),
        ),
        text=text_class(**text, rotary_interleaved=rotary_interleaved, sandwich_norms=sandwich_norms,
                        rotary_dim=rotary_dim, mrope_section=section, **text_fields),
        image_token_id=int(cfg.image_token_id), video_token_id=int(cfg.video_token_id),
        image_start_token_id=int(cfg.image_start_token_id), image_end_token_id=int(cfg.image_end_token_id),
        video_start_token_id=int(cfg.video_start_token_id), video_end_token_id=int(cfg.video_end_token_id),
        tie_word_embeddings=bool(cfg.tie_word_embeddings),
        raw=raw,
    )

"""The numbers the mm InternVL3 modules need, read from an HF ``config.json`` (either layout: see remote_layout).

transformers' ``InternVLConfig`` parses the file (defaults included), so a config.json written by
any transformers 5 release works; options our modules do not implement are refused by name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mm_core.errors import ConfigError
from mm_core.family.decoder import DecoderConfig, decoder_config_from_hf
from mm_core.family.hf_config import parse_with_transformers, read_hf_config
from mm_core.family.vision_config import VisionTowerConfig


@dataclass(frozen=True)
class VisionConfig(VisionTowerConfig):
    num_channels: int
    image_size: tuple[int, int]
    patch_size: int
    qkv_bias: bool
    qk_norm: bool  # RMSNorm over all heads of q and k (InternViT-6B)
    norm_type: str  # "layer_norm" (300M) or "rms_norm" (6B)
    eps: float
    hidden_act: str
    final_norm: bool  # use_mean_pooling False: a LayerNorm after the last block
    layer_scale_init: float

    @property
    def num_positions(self) -> int:
        return (self.image_size[0] // self.patch_size) * (self.image_size[1] // self.patch_size) + 1


@dataclass(frozen=True)
class InternVLConfig:
    vision: VisionConfig
    text: DecoderConfig  # the shared Qwen2 decoder's sizes
    image_token_id: int
    downsample_ratio: float
    projector_act: str
    tie_word_embeddings: bool
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)
    rope_limit: int | None = None  # rope_type 'dynamic': the rotary equals the default below this position

    @property
    def shuffle(self) -> int:
        """Patches merged per side by the pixel shuffle (2 for a ratio of 0.5)."""
        return round(1 / self.downsample_ratio)

    @property
    def projector_in(self) -> int:
        return self.vision.hidden_size * self.shuffle**2


def _pair(x: Any) -> tuple[int, int]:
    return (int(x[0]), int(x[1])) if isinstance(x, (list, tuple)) else (int(x), int(x))


def parse_config(hf_config: dict[str, Any] | str | Path) -> InternVLConfig:
    """Parse an HF InternVL config (dict, file or directory): the ``-hf`` layout (``model_type``
    ``internvl``) or the original remote-code one (``internvl_chat``, read as its ``-hf`` equivalent;
    no remote code runs)."""
    from mm_internvl.remote_layout import context_token_id, hf_config_from_remote, layout_of

    given, source = read_hf_config(hf_config)
    as_hf = given
    if layout_of(given) == "remote_code":
        token = None if isinstance(hf_config, dict) else context_token_id(hf_config)
        as_hf = hf_config_from_remote(given, source, token)
    cfg, _, _ = parse_with_transformers(as_hf, model_type="internvl", config_class="InternVLConfig", what="InternVL")
    raw = given
    v, t = cfg.vision_config, cfg.text_config
    if t.model_type != "qwen2":
        raise ConfigError(f"{source}: text_config.model_type is '{t.model_type}'; mm-internvl supports 'qwen2'")
    if cfg.vision_feature_layer != -1 or cfg.vision_feature_select_strategy != "default":
        raise ConfigError(f"{source}: vision_feature_layer {cfg.vision_feature_layer} / vision_feature_select_strategy "
                          f"'{cfg.vision_feature_select_strategy}' are not supported (InternVL3 uses -1 / 'default')")
    if v.norm_type not in ("layer_norm", "rms_norm"):
        raise ConfigError(f"{source}: vision_config.norm_type '{v.norm_type}' must be 'layer_norm' or 'rms_norm'")
    if not v.use_absolute_position_embeddings or v.use_mask_token:
        raise ConfigError(f"{source}: vision_config needs use_absolute_position_embeddings true and use_mask_token false")
    patch = _pair(v.patch_size)
    if patch[0] != patch[1]:
        raise ConfigError(f"{source}: vision_config.patch_size {list(patch)} must be square")
    ratio = float(cfg.downsample_ratio)
    if abs(round(1 / ratio) * ratio - 1) > 1e-9:
        raise ConfigError(f"{source}: downsample_ratio {ratio} must be 1/n for an integer n")
    if getattr(t, "use_sliding_window", False):
        raise ConfigError(f"{source}: text_config.use_sliding_window is not supported; set it to false")
    rope = dict(t.rope_parameters or {})
    if rope.get("rope_type", "default") not in ("default", "dynamic"):
        raise ConfigError(f"{source}: text_config rope_type '{rope.get('rope_type')}' is not supported "
                          f"('default', or 'dynamic' within max_position_embeddings)")
    # InternVL3's Qwen2.5 configs ask for dynamic NTK scaling (factor 2), which changes nothing below
    # max_position_embeddings (32768): positions are held below it (rope_limit)
    rope_limit = int(t.max_position_embeddings) if rope.get("rope_type") == "dynamic" else None
    return InternVLConfig(
        vision=VisionConfig(
            depth=v.num_hidden_layers, hidden_size=v.hidden_size, intermediate_size=v.intermediate_size,
            num_heads=v.num_attention_heads, num_channels=v.num_channels, image_size=_pair(v.image_size),
            patch_size=patch[0], qkv_bias=bool(v.attention_bias), qk_norm=bool(v.use_qk_norm),
            norm_type=v.norm_type, eps=float(v.layer_norm_eps), hidden_act=v.hidden_act,
            final_norm=not v.use_mean_pooling, layer_scale_init=float(v.layer_scale_init_value),
        ),
        text=DecoderConfig(**decoder_config_from_hf(t, source)),
        image_token_id=int(cfg.image_token_id),
        downsample_ratio=ratio,
        projector_act=cfg.projector_hidden_act,
        tie_word_embeddings=bool(cfg.tie_word_embeddings),
        raw=raw,
        rope_limit=rope_limit,
    )

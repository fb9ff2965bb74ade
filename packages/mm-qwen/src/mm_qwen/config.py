"""The few numbers the mm Qwen2.5-VL modules need, read from an HF ``config.json``.

transformers' ``Qwen2_5_VLConfig`` parses the file so that both layouts on the Hub work: the
nested ``text_config`` of transformers 5 and the older flat one.
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
    in_channels: int
    patch_size: int
    temporal_patch_size: int
    spatial_merge_size: int
    window_size: int
    out_hidden_size: int
    fullatt_block_indexes: tuple[int, ...]
    tokens_per_second: float
    rope_theta: float = 10000.0
    eps: float = 1e-6


@dataclass(frozen=True)
class TextConfig(DecoderConfig):
    """The shared decoder's sizes plus the multimodal rotary's split of ``head_dim / 2`` over t, h, w."""

    mrope_section: tuple[int, ...] = (16, 24, 24)


@dataclass(frozen=True)
class QwenVLConfig:
    vision: VisionConfig
    text: TextConfig
    image_token_id: int
    video_token_id: int
    vision_start_token_id: int
    tie_word_embeddings: bool
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)


def parse_config(hf_config: dict[str, Any] | str | Path) -> QwenVLConfig:
    """Parse an HF Qwen2.5-VL config (dict, file or directory)."""
    cfg, raw, source = parse_with_transformers(hf_config, model_type="qwen2_5_vl", config_class="Qwen2_5_VLConfig",
                                               what="Qwen2.5-VL")
    v, t = cfg.vision_config, cfg.text_config
    text = decoder_config_from_hf(t, source)
    vis_rope = dict(v.rope_parameters or {})
    section = tuple((t.rope_parameters or {}).get("mrope_section") or (16, 24, 24))
    if sum(section) != text["head_dim"] // 2:
        raise ConfigError(f"{source}: rope_parameters.mrope_section {list(section)} must sum to head_dim/2 = "
                          f"{text['head_dim'] // 2}")
    return QwenVLConfig(
        vision=VisionConfig(
            depth=v.depth, hidden_size=v.hidden_size, intermediate_size=v.intermediate_size,
            num_heads=v.num_heads, in_channels=v.in_channels, patch_size=int(v.patch_size),
            temporal_patch_size=int(v.temporal_patch_size), spatial_merge_size=v.spatial_merge_size,
            window_size=v.window_size, out_hidden_size=v.out_hidden_size,
            fullatt_block_indexes=tuple(v.fullatt_block_indexes), tokens_per_second=v.tokens_per_second,
            rope_theta=float(vis_rope.get("rope_theta", 10000.0)),
        ),
        text=TextConfig(**text, mrope_section=section),
        image_token_id=cfg.image_token_id,
        video_token_id=cfg.video_token_id,
        vision_start_token_id=cfg.vision_start_token_id,
        tie_word_embeddings=bool(cfg.tie_word_embeddings),
        raw=raw,
    )

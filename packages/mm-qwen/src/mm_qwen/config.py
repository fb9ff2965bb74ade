"""The few numbers the mm Qwen2.5-VL modules need, read from an HF ``config.json``.

transformers' ``Qwen2_5_VLConfig`` parses the file so that both layouts on the Hub work: the
nested ``text_config`` of transformers 5 and the older flat one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mm_core.errors import ConfigError


@dataclass(frozen=True)
class VisionConfig:
    depth: int
    hidden_size: int
    intermediate_size: int
    num_heads: int
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

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


@dataclass(frozen=True)
class TextConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    rms_norm_eps: float
    rope_theta: float
    mrope_section: tuple[int, ...] = (16, 24, 24)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


@dataclass(frozen=True)
class QwenVLConfig:
    vision: VisionConfig
    text: TextConfig
    image_token_id: int
    video_token_id: int
    vision_start_token_id: int
    tie_word_embeddings: bool
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)


def load_hf_config(hf_config: dict[str, Any] | str | Path) -> tuple[dict[str, Any], str]:
    """The config dict and a name for error messages, from a dict, a config.json or an HF dir."""
    if isinstance(hf_config, dict):
        return hf_config, "<config dict>"
    path = Path(hf_config)
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise ConfigError(f"{path}: no such file; pass an HF model directory containing config.json")
    try:
        return json.loads(path.read_text()), str(path)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON ({e})") from e


def parse_config(hf_config: dict[str, Any] | str | Path) -> QwenVLConfig:
    """Parse an HF Qwen2.5-VL config (dict, file or directory)."""
    from transformers import Qwen2_5_VLConfig

    raw, source = load_hf_config(hf_config)
    if raw.get("model_type") not in (None, "qwen2_5_vl"):
        raise ConfigError(f"{source}: model_type is '{raw.get('model_type')}', expected 'qwen2_5_vl'")
    try:
        cfg = Qwen2_5_VLConfig.from_dict({k: v for k, v in raw.items() if k != "transformers_version"})
    except Exception as e:  # transformers validates strictly (its own error types)
        raise ConfigError(f"{source}: not a valid Qwen2.5-VL config: {e}") from e
    v, t = cfg.vision_config, cfg.text_config
    rope = dict(t.rope_parameters or {})
    vis_rope = dict(v.rope_parameters or {})
    head_dim = t.hidden_size // t.num_attention_heads
    section = tuple(rope.get("mrope_section") or (16, 24, 24))
    if sum(section) != head_dim // 2:
        raise ConfigError(
            f"{source}: rope_parameters.mrope_section {list(section)} must sum to head_dim/2 = {head_dim // 2}"
        )
    if t.num_attention_heads % t.num_key_value_heads:
        raise ConfigError(f"{source}: num_attention_heads must be a multiple of num_key_value_heads")
    return QwenVLConfig(
        vision=VisionConfig(
            depth=v.depth, hidden_size=v.hidden_size, intermediate_size=v.intermediate_size,
            num_heads=v.num_heads, in_channels=v.in_channels, patch_size=int(v.patch_size),
            temporal_patch_size=int(v.temporal_patch_size), spatial_merge_size=v.spatial_merge_size,
            window_size=v.window_size, out_hidden_size=v.out_hidden_size,
            fullatt_block_indexes=tuple(v.fullatt_block_indexes), tokens_per_second=v.tokens_per_second,
            rope_theta=float(vis_rope.get("rope_theta", 10000.0)),
        ),
        text=TextConfig(
            vocab_size=t.vocab_size, hidden_size=t.hidden_size, intermediate_size=t.intermediate_size,
            num_layers=t.num_hidden_layers, num_heads=t.num_attention_heads,
            num_kv_heads=t.num_key_value_heads, rms_norm_eps=t.rms_norm_eps,
            rope_theta=float(rope.get("rope_theta", 1e6)), mrope_section=section,
        ),
        image_token_id=cfg.image_token_id,
        video_token_id=cfg.video_token_id,
        vision_start_token_id=cfg.vision_start_token_id,
        tie_word_embeddings=bool(cfg.tie_word_embeddings),
        raw=raw,
    )

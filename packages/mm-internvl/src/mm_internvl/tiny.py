"""Tiny random InternVL3 checkpoints and batches for tests (nothing is downloaded).

Odd vocabulary (301) so tp=2 splits it unevenly, GQA (4 q / 2 kv heads), 56 px tiles of 14 px
patches: 16 patches, 4 features per tile after the pixel shuffle.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from mm_core.batch import right_padded

IMAGE_TOKEN = 300
TOKENS_PER_TILE = 4


def tiny_config_dict(*, tied: bool = False, vision_depth: int = 2, text_layers: int = 2, qk_norm: bool = False,
                     vocab_size: int = 301, vision: dict[str, Any] | None = None,
                     text: dict[str, Any] | None = None) -> dict[str, Any]:
    """An HF ``config.json`` dict of a tiny InternVL3 (``qk_norm``: 6B-style RMSNorm ViT with q/k norms;
    ``vision`` / ``text``: fields that override the sections, e.g. head counts that tp does not divide)."""
    overrides = {"vision": dict(vision or {}), "text": dict(text or {})}
    vision = {"model_type": "internvl_vision", "hidden_size": 32, "num_hidden_layers": vision_depth,
              "num_attention_heads": 4, "intermediate_size": 64, "image_size": [56, 56], "patch_size": [14, 14],
              "attention_bias": not qk_norm, "use_qk_norm": qk_norm,
              "norm_type": "rms_norm" if qk_norm else "layer_norm", "use_mean_pooling": not qk_norm}
    text = {"model_type": "qwen2", "vocab_size": vocab_size, "hidden_size": 32, "intermediate_size": 64,
            "num_hidden_layers": text_layers, "num_attention_heads": 4, "num_key_value_heads": 2,
            "rms_norm_eps": 1e-6, "rope_parameters": {"rope_type": "default", "rope_theta": 1e6},
            "tie_word_embeddings": tied}
    vision.update(overrides["vision"])
    text.update(overrides["text"])
    return {"model_type": "internvl", "architectures": ["InternVLForConditionalGeneration"],
            "vision_config": vision, "text_config": text, "image_token_id": IMAGE_TOKEN,
            "downsample_ratio": 0.5, "projector_hidden_act": "gelu", "tie_word_embeddings": tied}


def save_tiny_model(path: str | Path, *, seed: int = 0, **kwargs: Any) -> Path:
    """A random transformers InternVL saved with ``save_pretrained`` (safetensors); returns the dir.

    Layer scales, positions and the CLS token are randomised too (transformers inits them constant).
    """
    from transformers import InternVLConfig, InternVLForConditionalGeneration

    torch.manual_seed(seed)
    cfg = InternVLConfig.from_dict(tiny_config_dict(**kwargs))
    model = InternVLForConditionalGeneration(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lambda_" in name or "embeddings.cls_token" in name or "position_embeddings" in name:
                p.normal_(0.0, 0.5)
            elif "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(path)
    return Path(path)


def make_inputs(config: dict[str, Any], rows: list[list[tuple[str, int]]], *, seed: int = 0,
                tile_size: int = 56) -> dict[str, torch.Tensor]:
    """A right-padded batch: each row a list of ``("text", n)`` or ``("image", tiles)`` parts.

    Returns ``input_ids``, ``attention_mask``, ``labels`` (padding and image tokens ignored) and,
    when there are images, ``pixel_values`` ``[tiles, 3, tile_size, tile_size]``.
    """
    g = torch.Generator().manual_seed(seed)
    vocab = int(config["text_config"]["vocab_size"])
    token = int(config["image_token_id"])
    per_tile = (tile_size // 14 // 2) ** 2
    seqs, tiles = [], 0
    for row in rows:
        parts = []
        for kind, n in row:
            if kind == "text":
                parts.append(torch.randint(0, min(vocab, token), (n,), generator=g))
            else:
                parts.append(torch.full((n * per_tile,), token))
                tiles += n
        seqs.append(torch.cat(parts))
    out = dict(right_padded(seqs, token))
    if tiles:
        out["pixel_values"] = torch.randn(tiles, 3, tile_size, tile_size, generator=g)
    return out

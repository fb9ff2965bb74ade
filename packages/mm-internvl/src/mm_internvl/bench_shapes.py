"""InternVL3-8B-shaped checkpoints for conversion benchmarks and memory tests (no weights: names and shapes).

``internvl3_8b_config(scale)`` is the published config (InternViT-300M-448px-V2.5 + Qwen2.5-7B, vocab
151674) in either layout (``internvl3_78b_config``: InternViT-6B + Qwen2.5-72B); ``internvl3_shapes(cfg)`` the tensor names a checkpoint of that layout
stores, with shapes. The ``-hf`` names and shapes come from transformers' class built on the meta
device (so they cannot drift from what ``save_pretrained`` writes); the remote-code ones follow from
them through the converter's two rule tables (the same mm tensor in both).
``scale`` shrinks the layer counts only, so every tensor keeps its real shape and a streaming
conversion's peak memory is the real model's; below 0.1 the vocabulary shrinks too (quick runs).
"""

from __future__ import annotations

from typing import Any

VISION_300M = {"model_type": "internvl_vision", "hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16,
               "intermediate_size": 4096, "image_size": [448, 448], "patch_size": [14, 14], "attention_bias": True,
               "use_qk_norm": False, "norm_type": "layer_norm", "layer_norm_eps": 1e-6, "hidden_act": "gelu",
               "use_mean_pooling": True, "layer_scale_init_value": 0.1}
QWEN25_7B = {"model_type": "qwen2", "vocab_size": 151674, "hidden_size": 3584, "intermediate_size": 18944,
             "num_hidden_layers": 28, "num_attention_heads": 28, "num_key_value_heads": 4, "rms_norm_eps": 1e-6,
             "max_position_embeddings": 32768, "hidden_act": "silu", "tie_word_embeddings": False,
             "rope_parameters": {"rope_type": "default", "rope_theta": 1e6}}


VISION_6B = {**VISION_300M, "hidden_size": 3200, "num_hidden_layers": 45, "num_attention_heads": 25,
             "intermediate_size": 12800, "attention_bias": False, "use_qk_norm": True, "norm_type": "rms_norm"}
QWEN25_72B = {**QWEN25_7B, "hidden_size": 8192, "intermediate_size": 29568, "num_hidden_layers": 80,
              "num_attention_heads": 64, "num_key_value_heads": 8}


def _scaled(n: int, scale: float) -> int:
    return n if scale >= 1 else max(2, round(n * scale))


def internvl3_8b_config(scale: float = 1.0, *, layout: str = "hf", vision: dict[str, Any] | None = None,
                        text: dict[str, Any] | None = None) -> dict[str, Any]:
    """InternVL3-8B's config.json (``layout``: "hf" or "remote_code"), layers scaled; ``vision`` /
    ``text`` override fields (narrower models for tests)."""
    from mm_internvl.remote_layout import config_for_layout

    v = {**VISION_300M, **(vision or {})}
    t = {**QWEN25_7B, **(text or {})}
    v["num_hidden_layers"] = _scaled(v["num_hidden_layers"], scale)
    t["num_hidden_layers"] = _scaled(t["num_hidden_layers"], scale)
    if scale < 0.1:
        t["vocab_size"] = max(1024, round(t["vocab_size"] * scale / 64) * 64 + 58)  # stays uneven like 151674
    cfg = {"architectures": ["InternVLForConditionalGeneration"], "model_type": "internvl", "torch_dtype": "bfloat16",
           "vision_config": v, "text_config": t, "image_token_id": 151667, "image_seq_length": 256,
           "downsample_ratio": 0.5, "projector_hidden_act": "gelu", "vision_feature_layer": -1,
           "vision_feature_select_strategy": "default", "tie_word_embeddings": False}
    return config_for_layout(cfg, layout)  # type: ignore[arg-type]


def internvl3_78b_config(scale: float = 1.0, *, layout: str = "hf") -> dict[str, Any]:
    """InternVL3-78B's config.json (InternViT-6B-448px-V2.5: 25 heads, q/k norms; Qwen2.5-72B)."""
    return internvl3_8b_config(scale, layout=layout, vision=VISION_6B, text=QWEN25_72B)


def _hf_shapes(cfg: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    import torch
    from transformers import InternVLConfig, InternVLForConditionalGeneration

    from mm_core.checkpoint.hf import to_canonical
    from mm_internvl.convert import InternVLConverter

    with torch.device("meta"):
        model = InternVLForConditionalGeneration(InternVLConfig.from_dict(cfg))
    return {to_canonical(k, InternVLConverter.HF_ALIASES)[0]: tuple(v.shape) for k, v in model.state_dict().items()}


def internvl3_shapes(cfg: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """``{stored tensor name: shape}`` of a checkpoint with config.json ``cfg`` (either layout), in
    the converter's order."""
    from mm_internvl.convert import InternVLConverter
    from mm_internvl.remote_layout import config_for_layout, layout_of

    hf_cfg = config_for_layout(cfg, "hf")
    hf_shapes = _hf_shapes(hf_cfg)
    conv = InternVLConverter()
    placement = conv.placement(hf_cfg, 1, {})
    source = conv.plan(hf_cfg, placement)
    with conv.writing(layout_of(cfg)):
        target = conv.plan(hf_cfg, placement)
    out: dict[str, tuple[int, ...]] = {}
    for a, b in zip(source.items, target.items):
        if a.tied_copy:
            continue
        mm_shape = a.rule.op.forward_shape([hf_shapes[k] for k in a.hf_keys])
        out.update(zip(b.hf_keys, b.rule.op.inverse_shapes(mm_shape)))
    return out


def internvl3_counts(cfg: dict[str, Any]) -> tuple[int, int]:
    """(vision, text) layers of a built config (either layout)."""
    from mm_core.family.hf_config import layer_counts

    return layer_counts(cfg)

"""Tiny Qwen2.5-VL checkpoints saved by transformers (tied and untied), for the conversion tests.

Loaded by path (``load_helpers``) from tests/convert/conftest.py and tests/qwen/test_convert*.py;
``cached`` builds each checkpoint once per pytest session.
"""

from __future__ import annotations

from pathlib import Path

import torch

SMALL = {"vocab_size": 320, "image_token_id": 300, "video_token_id": 301,
         "vision_start_token_id": 302, "vision_end_token_id": 303}


def tiny_qwen_config(*, tied: bool, vocab_size: int = 320, vision_depth: int = 4, text_layers: int = 4,
                     kv_heads: int = 2) -> dict:
    """Vision depth 4 (window + full attention blocks), LLM 4 layers, GQA 4 heads / 2 kv heads."""
    text = {"vocab_size": vocab_size, "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": text_layers,
            "num_attention_heads": 4, "num_key_value_heads": kv_heads, "max_position_embeddings": 512,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]},
            "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 2, "tie_word_embeddings": tied}
    vision = {"depth": vision_depth, "hidden_size": 32, "intermediate_size": 48, "num_heads": 4,
              "out_hidden_size": 64, "fullatt_block_indexes": [1, 3], "window_size": 28, "patch_size": 14,
              "spatial_merge_size": 2, "temporal_patch_size": 2}
    extra = dict(SMALL, vocab_size=vocab_size)
    extra.pop("vocab_size")
    return {"model_type": "qwen2_5_vl", "architectures": ["Qwen2_5_VLForConditionalGeneration"],
            "text_config": text, "vision_config": vision, "tie_word_embeddings": tied, **extra}


def save_tiny_qwen(path: Path, *, tied: bool, dtype: torch.dtype = torch.float32, seed: int = 0,
                   max_shard_size: str | None = None, **kw) -> Path:
    """``save_pretrained`` of a random tiny model, plus a fake tokenizer file to check copying."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    cfg = Qwen2_5_VLConfig.from_dict(tiny_qwen_config(tied=tied, **kw))
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(cfg).to(dtype)
    with torch.no_grad():  # distinct values everywhere (norms start at 1, biases at 0)
        for p in model.parameters():
            p.copy_(torch.randn_like(p))
    extra = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(path, **extra)
    (path / "tokenizer_config.json").write_text('{"model_max_length": 128}\n')
    return path




def cached(tmp_path_factory, name: str, **kw) -> Path:
    """One checkpoint per session (shared by every fixture that asks for the same ``name``)."""
    path = tmp_path_factory.getbasetemp() / "tiny_qwen" / name
    if not (path / "config.json").is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        save_tiny_qwen(path, **kw)
    return path

"""Tiny random Qwen2.5-VL checkpoints in the HF layout, for tests, the demo and benchmarks.

``save_tiny_model`` writes what the Hub ships (``config.json`` + ``model.safetensors``, optionally
the tokenizer/processor files) from transformers' own ``Qwen2_5_VLForConditionalGeneration``, so
our model is always compared against the reference implementation's weights and files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

# Small token ids for tokenizer-free tests; with a tokenizer the real Qwen ids are used.
SMALL_VOCAB = {"vocab_size": 320, "image_token_id": 300, "video_token_id": 301,
               "vision_start_token_id": 302, "vision_end_token_id": 303}


def tiny_config_dict(*, tied: bool = False, vision_depth: int = 4, text_layers: int = 4, hidden: int = 64,
                     heads: int = 4, kv_heads: int = 2, vit_hidden: int = 32, vit_heads: int = 2,
                     patch_size: int = 14, window_size: int = 56, fullatt_block_indexes=(1,),
                     vocab: dict[str, int] | None = None, **text_overrides: Any) -> dict[str, Any]:
    """A Qwen2.5-VL config dict with GQA, window attention and a full-attention block."""
    vocab = dict(vocab or SMALL_VOCAB)
    head_dim = hidden // heads
    q = head_dim // 2
    section = [q - 2 * (q // 3), q // 3, q // 3]  # sums to head_dim / 2, like [16, 24, 24]
    text = {
        "vocab_size": vocab.pop("vocab_size"), "hidden_size": hidden, "intermediate_size": 2 * hidden + 8,
        "num_hidden_layers": text_layers, "num_attention_heads": heads, "num_key_value_heads": kv_heads,
        "rms_norm_eps": 1e-6, "max_position_embeddings": 4096,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": section},
        "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 2,
    }
    text.update(text_overrides)
    vision = {
        "depth": vision_depth, "hidden_size": vit_hidden, "intermediate_size": 2 * vit_hidden + 8,
        "num_heads": vit_heads, "patch_size": patch_size, "temporal_patch_size": 2, "spatial_merge_size": 2,
        "window_size": window_size, "out_hidden_size": hidden, "fullatt_block_indexes": list(fullatt_block_indexes),
        "tokens_per_second": 2,
    }
    return {"model_type": "qwen2_5_vl", "architectures": ["Qwen2_5_VLForConditionalGeneration"],
            "text_config": text, "vision_config": vision, "tie_word_embeddings": tied, **vocab}


def build_hf_model(config: dict[str, Any], *, seed: int = 0, std: float | None = None):
    """transformers' model with seeded random weights (``std`` overrides ``initializer_range``)."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    cfg = Qwen2_5_VLConfig.from_dict(config)
    if std is not None:
        cfg.text_config.initializer_range = std
        cfg.vision_config.initializer_range = std
        cfg.initializer_range = std
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(cfg).eval()
    with torch.no_grad():  # norms start at 1 in HF: perturb them so a swapped norm would show in parity
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith(".bias"):
                p.add_(torch.randn_like(p) * 0.1)
    return model


def save_tiny_model(path: str | Path, *, tied: bool = False, seed: int = 0, with_processor: bool = False,
                    std: float | None = 0.05, **config_overrides: Any) -> Path:
    """Write a tiny random HF Qwen2.5-VL directory; ``with_processor`` adds tokenizer + processor
    files (the real Qwen ids, from ``mm_qwen.tokenizer``) so ``mm-run infer`` can use it."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    processor = None
    if with_processor:
        processor = tiny_processor()
        tok = processor.tokenizer
        config_overrides.setdefault("vocab", {
            "vocab_size": _round_up(len(tok), 64),
            "image_token_id": tok.convert_tokens_to_ids("<|image_pad|>"),
            "video_token_id": tok.convert_tokens_to_ids("<|video_pad|>"),
            "vision_start_token_id": tok.convert_tokens_to_ids("<|vision_start|>"),
            "vision_end_token_id": tok.convert_tokens_to_ids("<|vision_end|>"),
        })
        end = tok.convert_tokens_to_ids("<|im_end|>")
        config_overrides.setdefault("eos_token_id", end)
        config_overrides.setdefault("pad_token_id", tok.pad_token_id if tok.pad_token_id is not None else end)
        config_overrides.setdefault("bos_token_id", end)
    model = build_hf_model(tiny_config_dict(tied=tied, **config_overrides), seed=seed, std=std)
    model.save_pretrained(path)
    if processor is not None:
        processor.save_pretrained(path)
    return path


def tiny_processor(*, max_pixels: int = 112 * 112):
    """A Qwen2.5-VL processor with the real Qwen tokenizer and small images (few patches)."""
    from mm_qwen.tokenizer import build_processor  # the data pipeline's offline processor

    low = 4 * 28 * 28
    return build_processor(image_min_pixels=low, image_max_pixels=max_pixels, video_min_pixels=low,
                           video_max_pixels=max_pixels)


def _round_up(n: int, k: int) -> int:
    return -(-n // k) * k


def make_inputs(config: dict[str, Any], rows: list[list[tuple]], *, seed: int = 0, padding: str = "left",
                pack: bool = False) -> dict[str, torch.Tensor]:
    """A batch of random tokens and patches in the processor's layout.

    Each row is a list of parts: ``("text", n)``, ``("image", (t, h, w))`` or
    ``("video", (t, h, w), seconds_per_grid)``; media are wrapped in vision start/end tokens. With
    ``pack=True`` the rows become the samples of one packed row (``segment_ids``). The result also
    holds ``mm_token_type_ids``, which transformers' model needs and ours ignores.
    """
    g = torch.Generator().manual_seed(seed)
    vision = config["vision_config"]
    ids = {k: config[k] for k in ("image_token_id", "video_token_id", "vision_start_token_id",
                                  "vision_end_token_id")}
    low = 3
    high = min(ids.values())  # random text ids stay below the special ones
    patch_dim = 3 * vision["temporal_patch_size"] * vision["patch_size"] ** 2
    merge = vision["spatial_merge_size"] ** 2
    seqs, images, videos, seconds = [], [], [], []
    for row in rows:
        parts = []
        for part in row:
            if part[0] == "text":
                parts.append(torch.randint(low, high, (part[1],), generator=g))
                continue
            grid = part[1]
            token = ids["image_token_id"] if part[0] == "image" else ids["video_token_id"]
            (images if part[0] == "image" else videos).append(grid)
            if part[0] == "video":
                seconds.append(part[2])
            n = grid[0] * grid[1] * grid[2] // merge
            parts += [torch.tensor([ids["vision_start_token_id"]]), torch.full((n,), token),
                      torch.tensor([ids["vision_end_token_id"]])]
        seqs.append(torch.cat(parts))
    if pack:
        seg = torch.cat([torch.full((len(s),), i) for i, s in enumerate(seqs)])[None]
        seqs = [torch.cat(seqs)]
    longest = max(len(s) for s in seqs)
    input_ids = torch.full((len(seqs), longest), config["text_config"].get("pad_token_id") or 0)
    mask = torch.zeros(len(seqs), longest, dtype=torch.long)
    for b, s in enumerate(seqs):
        sl = slice(longest - len(s), longest) if padding == "left" else slice(0, len(s))
        input_ids[b, sl], mask[b, sl] = s, 1
    batch: dict[str, torch.Tensor] = {"input_ids": input_ids, "attention_mask": mask}
    if pack:
        batch["segment_ids"] = seg
    for key, grids in (("image", images), ("video", videos)):
        if grids:
            grid = torch.tensor(grids)
            pix = torch.randn(int(grid.prod(-1).sum()), patch_dim, generator=g)
            batch["pixel_values" if key == "image" else "pixel_values_videos"] = pix
            batch[f"{key}_grid_thw"] = grid
    if seconds:
        batch["second_per_grid_ts"] = torch.tensor(seconds, dtype=torch.float32)
    batch["mm_token_type_ids"] = ((input_ids == ids["image_token_id"]).int()
                                  + 2 * (input_ids == ids["video_token_id"]).int())
    labels = input_ids.masked_fill(mask == 0, -100)
    seg = batch.get("segment_ids", torch.where(mask.bool(), 0, -1))
    first = seg != torch.cat([torch.full_like(seg[:, :1], -2), seg[:, :-1]], 1)
    labels[first] = -100  # the first token of every sample predicts nothing (batch contract)
    batch["labels"] = labels
    return batch

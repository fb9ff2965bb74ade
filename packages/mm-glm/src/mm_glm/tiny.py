"""Tiny random GLM-4.1V checkpoints in the HF layout and batches in the processor's layout (tests,
benchmarks; nothing is downloaded).

``save_tiny_model`` writes what the Hub ships (``config.json`` + ``model.safetensors``) from
transformers' own ``Glm4vForConditionalGeneration``: GQA with 2 key/value heads, the partial
interleaved rotary (half of ``head_dim``) with an mRoPE split in GLM's 8:12:12 proportions, a 6x6
position table that images of other grids resample, and a small vocabulary whose top ids are the
special tokens.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

SMALL_VOCAB = {"vocab_size": 320, "image_token_id": 300, "video_token_id": 301, "image_start_token_id": 302,
               "image_end_token_id": 303, "video_start_token_id": 304, "video_end_token_id": 305}
TEXT_HIGH = 290  # random text ids stay below this (and the timestamps' "digits" too)


def tiny_config_dict(*, vision_depth: int = 2, text_layers: int = 2, hidden: int = 128, heads: int = 4,
                     kv_heads: int = 2, vit_hidden: int = 32, vit_heads: int = 2, image_size: int = 84,
                     tied: bool = False, vocab: dict[str, int] | None = None, **text_overrides: Any) -> dict[str, Any]:
    """A GLM-4.1V ``config.json`` dict (``head_dim = hidden / heads``; rotary on half of it)."""
    vocab = dict(vocab or SMALL_VOCAB)
    rotary_half = hidden // heads // 4  # frequencies of the partial rotary (half of head_dim / 2)
    hw = (3 * rotary_half) // 8
    section = [rotary_half - 2 * hw, hw, hw]  # [8, 12, 12] at head_dim 128
    text = {"vocab_size": vocab.pop("vocab_size"), "hidden_size": hidden, "intermediate_size": 2 * hidden + 32,
            "num_hidden_layers": text_layers, "num_attention_heads": heads, "num_key_value_heads": kv_heads,
            "rms_norm_eps": 1e-5, "max_position_embeddings": 4096, "hidden_act": "silu",
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5,
                                "mrope_section": section},
            "pad_token_id": 0, "eos_token_id": [1, 2]}
    text.update(text_overrides)
    vision = {"depth": vision_depth, "hidden_size": vit_hidden, "num_heads": vit_heads, "out_hidden_size": hidden,
              "intermediate_size": 3 * hidden // 2, "image_size": image_size, "patch_size": 14,
              "spatial_merge_size": 2, "temporal_patch_size": 2, "in_channels": 3, "rms_norm_eps": 1e-5,
              "hidden_act": "silu", "attention_bias": False,
              "rope_parameters": {"rope_type": "axial", "rope_theta": 10000.0}}
    return {"model_type": "glm4v", "architectures": ["Glm4vForConditionalGeneration"], "text_config": text,
            "vision_config": vision, "tie_word_embeddings": tied, **vocab}


def build_hf_model(config: dict[str, Any], *, seed: int = 0, std: float = 0.05,
                   classes: tuple[str, str] = ("Glm4vConfig", "Glm4vForConditionalGeneration")):
    """transformers' model (``classes``: config and model class names) with seeded random weights;
    norms, biases and the position table are perturbed so that a swapped or missing one shows in
    the parity checks."""
    import transformers

    cfg = getattr(transformers, classes[0]).from_dict(config)
    for sub in (cfg, cfg.text_config, cfg.vision_config):
        sub.initializer_range = std
    torch.manual_seed(seed)
    model = getattr(transformers, classes[1])(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith(".bias"):
                p.add_(torch.randn_like(p) * 0.1)
            elif "position_embedding" in name:
                p.normal_(0.0, 0.5)
    return model


def save_tiny_model(path: str | Path, *, seed: int = 0, std: float = 0.05, with_processor: bool = False,
                    **config_overrides: Any) -> Path:
    """Write a tiny random HF GLM-4.1V directory with ``save_pretrained``; returns it.
    ``with_processor`` adds the offline GLM tokenizer, chat template and processor files
    (``testing_tokenizer``, small pixel limits) and gives the model their ids: the special tokens at
    their published ids, and the end-of-turn ids of GLM-4.1V's generation config, so ``mm-run infer``
    and transformers can run it."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    if with_processor:
        config_overrides = {**processor_config_overrides(), **config_overrides}
    build_hf_model(tiny_config_dict(**config_overrides), seed=seed, std=std).save_pretrained(path)
    if with_processor:
        from mm_glm.testing_tokenizer import save_glm_processor

        save_glm_processor(path, **PROCESSOR_PIXELS)
    return path


PROCESSOR_PIXELS = {"image_min_pixels": 3136, "image_max_pixels": 50176, "video_min_pixels": 3136,
                    "video_max_pixels": 12544}  # a few dozen patches per image: tiny tests stay fast


def processor_config_overrides() -> dict[str, Any]:
    """``tiny_config_dict`` overrides that match the offline GLM processor's tokenizer."""
    from mm_glm.testing_tokenizer import PLAIN_ADDED_TOKENS, TOKEN_IDS

    size = max(TOKEN_IDS.values()) + 1 + len(PLAIN_ADDED_TOKENS)  # the reasoning tags come last
    vocab = {"vocab_size": -(-size // 64) * 64, "image_token_id": TOKEN_IDS["<|image|>"],
             "video_token_id": TOKEN_IDS["<|video|>"], "image_start_token_id": TOKEN_IDS["<|begin_of_image|>"],
             "image_end_token_id": TOKEN_IDS["<|end_of_image|>"],
             "video_start_token_id": TOKEN_IDS["<|begin_of_video|>"],
             "video_end_token_id": TOKEN_IDS["<|end_of_video|>"]}
    ends = [TOKEN_IDS[t] for t in ("<|endoftext|>", "<|user|>", "<|observation|>")]
    return {"vocab": vocab, "eos_token_id": ends, "pad_token_id": TOKEN_IDS["<|endoftext|>"]}


def make_inputs(config: dict[str, Any], rows: list[list[tuple]], *, seed: int = 0, padding: str = "right",
                pack: bool = False) -> dict[str, torch.Tensor]:
    """A batch of random tokens and patches in the HF processor's layout.

    Each row is a list of parts: ``("text", n)``, ``("image", (h, w))`` (patch grid, even sides) or
    ``("video", (t, h, w), seconds)`` (``t`` temporal patches, i.e. 2t frames; ``seconds`` one
    timestamp per frame group). An image is ``<|begin_of_image|>`` + placeholders +
    ``<|end_of_image|>``; a video is ``<|begin_of_video|>``, then per frame group
    ``<|begin_of_image|>`` + placeholders + ``<|end_of_image|>`` + its timestamp's tokens, then
    ``<|end_of_video|>``. Right padding by default (transformers' text-only forward counts
    positions from each row's first slot). ``pack=True`` makes the rows the samples of one packed
    row (``segment_ids``). Also returns ``mm_token_type_ids`` (transformers needs it) and ``labels``.
    """
    g = torch.Generator().manual_seed(seed)
    vision = config["vision_config"]
    ids = {k: int(config[k]) for k in SMALL_VOCAB if k != "vocab_size"}
    patch_dim = 3 * vision["temporal_patch_size"] * vision["patch_size"] ** 2
    merge = vision["spatial_merge_size"] ** 2

    def tokens(*xs: int) -> torch.Tensor:
        return torch.tensor(xs, dtype=torch.long)

    def frame(h: int, w: int) -> list[torch.Tensor]:
        return [tokens(ids["image_start_token_id"]), torch.full((h * w // merge,), ids["image_token_id"]),
                tokens(ids["image_end_token_id"])]

    seqs, types, images, videos = [], [], [], []
    for row in rows:
        parts: list[torch.Tensor] = []
        kinds: list[torch.Tensor] = []
        for part in row:
            if part[0] == "text":
                parts.append(torch.randint(3, TEXT_HIGH, (part[1],), generator=g))
                kinds.append(torch.zeros(part[1], dtype=torch.long))
            elif part[0] == "image":
                h, w = part[1]
                images.append([1, h, w])
                chunk = torch.cat(frame(h, w))
                parts.append(chunk)
                kinds.append((chunk == ids["image_token_id"]).long())
            else:
                t, h, w = part[1]
                videos.append([t, h, w])
                pieces = [tokens(ids["video_start_token_id"])]
                for i in range(t):
                    pieces += frame(h, w) + [tokens(*(3 + int(c) for c in str(int(part[2] * i))))]
                pieces.append(tokens(ids["video_end_token_id"]))
                chunk = torch.cat(pieces)
                parts.append(chunk)
                kinds.append(2 * (chunk == ids["image_token_id"]).long())
        seqs.append(torch.cat(parts))
        types.append(torch.cat(kinds))
    if pack:
        seg = torch.cat([torch.full((len(s),), i) for i, s in enumerate(seqs)])[None]
        seqs, types = [torch.cat(seqs)], [torch.cat(types)]
    longest = max(len(s) for s in seqs)
    pad = int(config["text_config"].get("pad_token_id") or 0)
    input_ids = torch.full((len(seqs), longest), pad)
    type_ids = torch.zeros(len(seqs), longest, dtype=torch.long)
    mask = torch.zeros(len(seqs), longest, dtype=torch.long)
    for b, (s, k) in enumerate(zip(seqs, types)):
        sl = slice(longest - len(s), longest) if padding == "left" else slice(0, len(s))
        input_ids[b, sl], type_ids[b, sl], mask[b, sl] = s, k, 1
    batch: dict[str, torch.Tensor] = {"input_ids": input_ids, "attention_mask": mask, "mm_token_type_ids": type_ids}
    if pack:
        batch["segment_ids"] = seg
    for key, grids in (("image", images), ("video", videos)):
        if grids:
            grid = torch.tensor(grids)
            batch["pixel_values" if key == "image" else "pixel_values_videos"] = torch.randn(
                int(grid.prod(-1).sum()), patch_dim, generator=g)
            batch[f"{key}_grid_thw"] = grid
    labels = input_ids.masked_fill(mask == 0, -100)
    seg_ids = batch.get("segment_ids", torch.where(mask.bool(), 0, -1))
    first = seg_ids != torch.cat([torch.full_like(seg_ids[:, :1], -2), seg_ids[:, :-1]], 1)
    labels[first] = -100  # the first token of every sample predicts nothing (batch contract)
    batch["labels"] = labels
    return batch

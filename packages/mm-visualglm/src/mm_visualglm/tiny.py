"""Tiny random VisualGLM-6B checkpoints and batches (tests, benchmarks; nothing is downloaded).

There is no transformers class for VisualGLM, so the tiny checkpoint is our own model's random
weights written with the HF remote-code key names (``image_encoder.*``, ``transformer.*``,
``lm_head.weight``; the converter's ``safetensors`` layout) as ``model.safetensors`` + a ``config.json`` of the
HF repository's shape. Token ids keep ChatGLM's roles on a small vocabulary.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

SMALL_IDS = {"vocab_size": 160, "mask_token_id": 150, "gmask_token_id": 151, "bos_token_id": 152,
             "eos_token_id": 153, "pad_token_id": 3, "unk_token_id": 0}
TEXT_LOW, TEXT_HIGH = 5, 140  # random text ids


def tiny_config_dict(*, vision_depth: int = 2, text_layers: int = 2, qformer_layers: int = 2, hidden: int = 64,
                     heads: int = 4, vit_hidden: int = 32, vit_heads: int = 2, qformer_hidden: int = 32,
                     qformer_heads: int = 2, queries: int = 4, image_size: int = 28, patch_size: int = 14,
                     ids: dict[str, int] | None = None) -> dict[str, Any]:
    """A VisualGLM ``config.json`` dict in the HF remote-code shape (SAT argument names inside
    ``eva_config`` / ``qformer_config``); cross-attention on the Q-Former's even layers."""
    ids = dict(ids or SMALL_IDS)
    eva = {"num_layers": vision_depth, "hidden_size": vit_hidden, "num_attention_heads": vit_heads,
           "vocab_size": 1, "layernorm_order": "pre", "inner_hidden_size": 2 * vit_hidden,
           "max_sequence_length": (image_size // patch_size) ** 2 + 1, "use_final_layernorm": False,
           "layernorm_epsilon": 1e-6, "image_size": [image_size, image_size], "pre_len": 1, "in_channels": 3,
           "patch_size": patch_size}
    qformer = {"num_layers": qformer_layers, "hidden_size": qformer_hidden, "num_attention_heads": qformer_heads,
               "vocab_size": queries, "layernorm_order": "post", "inner_hidden_size": 2 * qformer_hidden,
               "max_sequence_length": 0, "is_decoder": [i % 2 == 0 for i in range(qformer_layers)],
               "cross_attn_hidden_size": vit_hidden, "layernorm_epsilon": 1e-12}
    return {"model_type": "chatglm", "architectures": ["ChatGLMForConditionalGenerationWithImage"],
            "hidden_size": hidden, "num_attention_heads": heads, "num_layers": text_layers,
            "inner_hidden_size": 2 * hidden, "layernorm_epsilon": 1e-5, "max_sequence_length": 256,
            "position_encoding_2d": True, "image_length": queries, "eva_config": eva, "qformer_config": qformer,
            **ids}


def random_mm_state(config: dict[str, Any], *, seed: int = 0, std: float = 0.05) -> dict[str, torch.Tensor]:
    """Our model's random weights (mm names); norms, biases and the position table perturbed so a
    swapped or missing one shows in the checks."""
    from mm_visualglm.model import build_model

    torch.manual_seed(seed)
    model = build_model(config, device="cpu")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".bias") or "layernorm" in name or "ln_vision" in name:
                p.add_(torch.randn_like(p) * 0.1)
            else:
                p.normal_(0.0, std if "embeddings" not in name and "cls_token" not in name else 0.5)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def save_tiny_model(path: str | Path, *, seed: int = 0, std: float = 0.05, tokenizer: bool = False,
                    **config_overrides: Any) -> Path:
    """Write a tiny random VisualGLM directory (HF remote-code names, safetensors); returns it.
    ``tokenizer``: also a tiny ``ice_text.model`` (``mm_visualglm.testing_tokenizer``), whose ids the config takes."""
    from safetensors.torch import save_file

    from mm_visualglm.sources import mm_to_source

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    if tokenizer:
        from mm_visualglm.testing_tokenizer import save_tiny_tokenizer, tokenizer_ids

        config_overrides["ids"] = tokenizer_ids(save_tiny_tokenizer(path))
    config = tiny_config_dict(**config_overrides)
    state = mm_to_source(random_mm_state(config, seed=seed, std=std), config, "safetensors")
    save_file({k: v.contiguous() for k, v in state.items()}, str(path / "model.safetensors"), metadata={"format": "pt"})
    (path / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return path


def prompt_ids(config: dict[str, Any], gen: torch.Generator, *, images: int, text: int, answer: int) -> list[int]:
    """``<img>`` ids, placeholders, ``</img>`` + question ids, ``[gMASK] <sop>``, answer ids (random text)."""
    def rand(n: int) -> list[int]:
        return torch.randint(TEXT_LOW, TEXT_HIGH, (n,), generator=gen).tolist()

    ids: list[int] = []
    for _ in range(images):
        ids += rand(2) + [int(config.get("unk_token_id", 0))] * int(config["image_length"]) + rand(2)
    ids += rand(text) + [int(config["gmask_token_id"]), int(config["bos_token_id"])] + rand(answer)
    return ids


def make_inputs(config: dict[str, Any], rows: list[tuple[int, int, int]], *, seed: int = 0
                ) -> dict[str, torch.Tensor]:
    """A right-padded batch: each row ``(images, question tokens, answer tokens)``; ``labels`` from
    ``<sop>`` on (the original recipe), ``pixel_values`` for every image in order."""
    gen = torch.Generator().manual_seed(seed)
    seqs = [prompt_ids(config, gen, images=n, text=t, answer=a) for n, t, a in rows]
    width = max(len(s) for s in seqs)
    pad = int(config["pad_token_id"])
    ids = torch.full((len(seqs), width), pad)
    mask = torch.zeros(len(seqs), width, dtype=torch.long)
    labels = torch.full((len(seqs), width), -100)
    for r, s in enumerate(seqs):
        ids[r, :len(s)] = torch.tensor(s)
        mask[r, :len(s)] = 1
        sop = s.index(int(config["bos_token_id"]))
        labels[r, sop:len(s)] = torch.tensor(s[sop:])
    batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    n_images = sum(n for n, _, _ in rows)
    if n_images:
        size = int(config["eva_config"]["image_size"][0])
        batch["pixel_values"] = torch.randn(n_images, 3, size, size, generator=gen)
    return batch


def synthetic_image(config: dict[str, Any], side: int, generator: torch.Generator
                    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One random image for the engine's synthetic data (``ModelSpec.synthetic_image``): its
    ``image_length`` placeholder ids and ``pixel_values`` ``[1, 3, S, S]`` at the ViT's own size
    (the position table is fixed, so ``side`` is not used)."""
    from mm_visualglm.config import parse_config

    cfg = parse_config(config)
    size = cfg.vision.image_size
    ids = torch.full((cfg.image_length,), cfg.image_token_id, dtype=torch.long)
    return ids, {"pixel_values": torch.randn(1, 3, size, size, generator=generator)}

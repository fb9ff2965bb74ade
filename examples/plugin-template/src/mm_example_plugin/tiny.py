"""Tiny random checkpoints and batches of the example family (for its conformance tests and the
``tiny_checkpoint`` hook). The HF directory is written through the converter's own rule table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from mm_core.batch import right_padded
from mm_example_plugin.model import build_model, tiny_config


def save_tiny_model(path: str | Path, *, seed: int = 0, **config_overrides: Any) -> Path:
    """config.json + model.safetensors in the family's HF names, from a randomly initialised model."""
    from safetensors.torch import save_file

    from mm_core.checkpoint.rules import expand
    from mm_core.layout import Placement
    from mm_example_plugin.convert import ExampleConverter

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    config = tiny_config(**config_overrides)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(config, device="cpu")
        with torch.no_grad():  # norms start at 1 and biases at 0: perturb them so a swap would show
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.1)
    state = model.state_dict()
    conv = ExampleConverter()
    depths = conv.depths(config)
    plan = expand(conv.rules(config), depths, Placement(depths, {}), tied=False)
    tensors = {item.hf_keys[0]: state[item.mm_key].contiguous() for item in plan.items}
    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
    (path / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return path


def make_batch(config: dict[str, Any], case: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tokens; an image is ``n`` patches (``patch_dim`` values each) behind ``n`` image tokens."""
    g = torch.Generator().manual_seed(seed)
    image_token, vocab = int(config["image_token_id"]), int(config["vocab_size"])
    patch_dim = int(config["vision_config"]["patch_dim"])
    rows = {"text": [[9], [5]], "image": [[3, -4, 5]], "two_images": [[2, -3, 2, -6, 4]]}[case]
    seqs, patches = [], 0
    for row in rows:
        parts = []
        for n in row:  # n > 0: text tokens, n < 0: an image of -n patches
            parts.append(torch.full((-n,), image_token) if n < 0 else torch.randint(image_token + 1, vocab, (n,),
                                                                                     generator=g))
            patches += max(0, -n)
        seqs.append(torch.cat(parts))
    batch = dict(right_padded(seqs, image_token))
    batch["labels"][:, 0] = -100  # the first token predicts nothing
    if patches:
        batch["pixel_values"] = torch.randn(patches, patch_dim, generator=g)
    return batch

"""Shared by the merge and PEFT tests: a tiny Qwen2.5-VL HF directory and random adapters on it."""

from __future__ import annotations

from pathlib import Path

import torch

from mm_core.lora.apply import adapter_state, apply_lora
from mm_core.lora.config import LoraConfig
from mm_core.lora.files import write_adapters
from mm_core.lora.fingerprint import weights_fingerprint
from mm_core.plugins import get_plugin_manager

LORA = LoraConfig(rank=2, alpha=3.0, targets=["linear_qkv", "linear_proj", "linear_fc1", "linear_fc2"],
                  layers={"vision_encoder": [1], "text_decoder": [0, 1]})


def our_model(hf_dir: Path, hf: dict):
    from mm_core.nn.pretrained import load_hf_weights

    spec = get_plugin_manager().model_for_hf_config(hf)
    model = spec.builder(hf, vit_pp_layers=[2], llm_pp_layers=[2], pp_rank=0, device="cpu", dtype=torch.float32)
    load_hf_weights(model, hf_dir, spec.converter)
    return spec, model.eval()


def make_adapters(hf_dir: Path, out: Path, batch: dict, seed: int = 4) -> torch.Tensor:
    """Random adapters on the base (written like the engine writes them); returns base + adapters logits."""
    from mm_core.family.hf_config import load_hf_config

    hf = load_hf_config(hf_dir)
    spec, model = our_model(hf_dir, hf)
    apply_lora(model, LORA, spec, hf, seed=1)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in adapter_state(model).items():
            if ".lora_B." in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    write_adapters(out, adapter_state(model), LORA, {"kind": "hf", "path": str(hf_dir)}, weights_fingerprint(hf_dir),
                   spec.name)
    with torch.no_grad():
        return model(**batch)



def base_and_adapters(tmp: Path) -> tuple[Path, dict, torch.Tensor]:
    """``(hf_dir, batch, base + adapters logits)``; the adapters are in ``tmp / "adapters"``."""
    from mm_core.family.hf_config import load_hf_config
    from mm_qwen.tiny import make_inputs, save_tiny_model

    hf_dir = save_tiny_model(tmp / "hf", vision_depth=2, text_layers=2)
    batch = make_inputs(load_hf_config(hf_dir), [[("text", 4), ("image", (1, 8, 12)), ("text", 5)]], seed=2)
    return hf_dir, batch, make_adapters(hf_dir, tmp / "adapters", batch)

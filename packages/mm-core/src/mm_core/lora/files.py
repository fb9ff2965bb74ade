"""An adapters directory: ``adapter_model.safetensors`` (whole-model mm names, full tensors) and
``mm_lora.json`` (the lora section, the base it was trained on and that base's fingerprint)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from mm_core.lora.config import LoraConfig

WEIGHTS = "adapter_model.safetensors"
META = "mm_lora.json"
FORMAT = 1


def write_adapters(directory: str | Path, tensors: Mapping[str, torch.Tensor], cfg: LoraConfig,
                   base: Mapping[str, Any], fingerprint: str, model: str) -> Path:
    """Write the two files (the directory may exist; the files are replaced)."""
    from safetensors.torch import save_file

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().to("cpu").contiguous() for k, v in sorted(tensors.items())}, str(d / WEIGHTS),
              metadata={"format": "mm-lora"})
    source = {k: v for k, v in base.items() if k != "hf_config"}
    meta = {"format": FORMAT, "model": model, "lora": dataclasses.asdict(cfg), "scaling": cfg.scaling,
            "base": source, "base_fingerprint": fingerprint}
    (d / META).write_text(json.dumps(meta, indent=2) + "\n")
    return d


def read_adapters(directory: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``(tensors, meta)`` of an adapters directory (errors name the missing file)."""
    from safetensors.torch import load_file

    d = Path(directory)
    for name in (WEIGHTS, META):
        if not (d / name).is_file():
            raise FileNotFoundError(f"{d}: no {name}; give the 'lora' directory of a LoRA checkpoint "
                                    f"(<save>/iter_N/lora) or a directory written by mm-run lora")
    meta = json.loads((d / META).read_text())
    return load_file(str(d / WEIGHTS)), meta


def lora_config_of(meta: Mapping[str, Any]) -> LoraConfig:
    return LoraConfig(**meta["lora"])

"""The engine's one call: adapters on a freshly built (tp-planned, not yet FSDP2-wrapped) stage."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from mm_core.lora.apply import LoraState, apply_lora


def base_source(model_cfg: Any, hf_config: Mapping[str, Any], seed: int, spec_name: str) -> dict[str, Any]:
    """Where the base weights come from, for the fingerprint (``mm_core.lora.fingerprint``)."""
    if model_cfg.random_init:
        return {"kind": "random_init", "seed": seed, "model": spec_name, "hf_config": dict(hf_config)}
    if model_cfg.mm_dir:
        return {"kind": "mm", "path": str(model_cfg.mm_dir)}
    return {"kind": "hf", "path": str(model_cfg.hf_dir)}


def attach_to_stage(model: nn.Module, cfg: Any, spec: Any, hf_config: Mapping[str, Any], names: Any,
                    gated: Mapping[str, object]) -> LoraState:
    """Freeze the stage and give its selected Linears adapters (whole-model names via ``names``)."""
    return apply_lora(model, cfg.lora, spec, hf_config, to_global=names.to_global, seed=cfg.training.seed,
                      blocks=gated, base=base_source(cfg.model, hf_config, cfg.training.seed, spec.name))

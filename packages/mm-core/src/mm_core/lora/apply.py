"""Put adapters on a (stage) model: freeze the base, attach one adapter per selected Linear."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from mm_core.lora.adapter import attach
from mm_core.lora.config import LoraConfig, check_values
from mm_core.lora.sections import RuleSections
from mm_core.lora.targets import Target, select_targets

ADAPTER_MARK = (".lora_A.", ".lora_B.")


def is_adapter(name: str) -> bool:
    """Whether a parameter name is an adapter's (``...linear_qkv.lora_A.0``)."""
    return any(m in name for m in ADAPTER_MARK)


@dataclass
class LoraState:
    """Recorded on the model as ``model.mm_lora``: the config and the adapted modules."""

    config: LoraConfig
    targets: list[Target] = field(default_factory=list)
    base: dict[str, Any] = field(default_factory=dict)  # where the base weights came from (fingerprint)
    model: str = ""  # the registered model name


def apply_lora(model: nn.Module, cfg: LoraConfig, spec: Any, hf_config: Mapping[str, Any], *,
               to_global: Callable[[str], str] = lambda n: n, seed: int = 0,
               blocks: Mapping[str, object] | None = None, base: dict[str, Any] | None = None) -> LoraState:
    """Freeze every base parameter and attach adapters; returns (and records) what was done.

    ``to_global``: stage-local -> whole-model names (pipeline stages); ``blocks``: the engine's
    tp-blocked parameters (``row_order``), whose rows a tp rank holds in sectioned order.
    """
    check_values(cfg)
    for p in model.parameters():
        p.requires_grad_(False)
    sections = RuleSections(spec.converter, hf_config)
    targets = select_targets(model, cfg, spec, to_global)
    for t in targets:
        module = model.get_submodule(t.local)
        shape = (module.weight.shape[0], module.weight.shape[1])
        attach(module, t.name, sections.of(f"{t.name}.weight", shape), cfg.rank, cfg.scaling, cfg.dropout, seed,
               (blocks or {}).get(f"{t.local}.weight"))
    state = LoraState(cfg, targets, dict(base or {}), spec.name)
    model.mm_lora = state
    return state


def adapter_state(model: nn.Module) -> dict[str, nn.Parameter]:
    """The adapter parameters of ``model`` by (model-relative) name."""
    return {n: p for n, p in model.named_parameters() if is_adapter(n)}


def set_adapters(model: nn.Module, tensors: Mapping[str, Any]) -> None:
    """Load adapter tensors (model-relative names) into an adapted model; names must match exactly."""
    import torch

    own = adapter_state(model)
    missing, unexpected = sorted(set(own) - set(tensors)), sorted(set(tensors) - set(own))
    if missing or unexpected:
        raise ValueError(f"adapters do not fit the model: missing {missing[:4]}, unexpected {unexpected[:4]}")
    with torch.no_grad():
        for name, p in own.items():
            p.copy_(tensors[name])

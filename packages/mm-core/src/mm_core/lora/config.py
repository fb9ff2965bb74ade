"""The ``lora:`` section of a finetune config, and its checks against the model."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mm_core.errors import ConfigError

# module group -> which pipeline module's layers it numbers (vision_projector has no layer list)
GROUP_MODULE = {"vision_encoder": "vit", "text_decoder": "llm"}


@dataclass
class LoraConfig:
    """Low-rank adapters: ``W x + (alpha / rank) * B A dropout(x)`` on the targeted Linears.

    ``targets``: patterns (fnmatch) matched against a Linear's name inside its layer
    (``self_attention.linear_qkv``) or its last part (``linear_qkv``). ``layers``: module group ->
    layer indices in that group's layer list (whole-model numbering; null = every layer).
    The original VisualGLM recipe: rank 10, alpha 1, targets [linear_qkv, linear_proj],
    layers {text_decoder: [0, 14]}.
    """

    rank: int = 8
    alpha: float = 8.0
    dropout: float = 0.0
    targets: list[str] = field(default_factory=lambda: ["linear_qkv", "linear_proj"])
    layers: dict[str, list[int] | None] = field(default_factory=lambda: {"text_decoder": None})

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank


def check_values(cfg: LoraConfig) -> None:
    """Checks that need no model (raise ConfigError naming the field)."""
    if not isinstance(cfg.rank, int) or cfg.rank <= 0:
        raise ConfigError(f"lora.rank: must be a positive integer, got {cfg.rank}")
    if cfg.alpha <= 0:
        raise ConfigError(f"lora.alpha: must be > 0, got {cfg.alpha}")
    if not 0.0 <= cfg.dropout < 1.0:
        raise ConfigError(f"lora.dropout: must be in [0, 1), got {cfg.dropout}")
    if not cfg.targets:
        raise ConfigError("lora.targets: give at least one module name pattern (e.g. linear_qkv)")
    if not cfg.layers:
        raise ConfigError("lora.layers: give at least one module group (e.g. {text_decoder: null})")
    for group in cfg.layers:
        if group not in GROUP_MODULE:
            raise ConfigError(f"lora.layers: unknown module group '{group}'; groups with layers: "
                              f"{', '.join(GROUP_MODULE)}")


def check_layers(cfg: LoraConfig, depths: Mapping[str, int]) -> None:
    """Every listed layer exists (``depths``: pipeline module -> layer count)."""
    for group, layers in cfg.layers.items():
        total = depths.get(GROUP_MODULE[group], 0)
        for i in layers or ():
            if not isinstance(i, int) or not 0 <= i < total:
                raise ConfigError(f"lora.layers.{group}: layer {i} is out of range; the model's {group} has "
                                  f"{total} layers (0..{total - 1})")


def check_against_model(cfg: LoraConfig, spec: Any, hf_config: dict[str, Any], depths: Mapping[str, int]) -> None:
    """All checks, with every target pattern matching a Linear of the chosen layers (whole model on meta)."""
    import torch

    from mm_core.lora.targets import check_patterns

    check_values(cfg)
    check_layers(cfg, depths)
    model = spec.builder(hf_config, vit_pp_layers=[depths.get("vit", 0)], llm_pp_layers=[depths.get("llm", 0)],
                         pp_rank=0, device="meta", dtype=torch.float32)
    check_patterns(model, cfg, spec)

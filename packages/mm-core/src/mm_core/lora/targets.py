"""Which Linears get adapters: by name pattern inside a layer, and by layer index in a module group."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

from torch import nn

from mm_core.errors import ConfigError
from mm_core.lora.config import LoraConfig

_LAYER = re.compile(r"^(.*?\.layers)\.(\d+)\.(.*)$")


@dataclass(frozen=True)
class Target:
    """One adapted Linear: its path in the stage model and in the whole model (global layer number)."""

    local: str
    name: str  # whole-model module path (checkpoint names)
    group: str
    layer: int


def _group(spec: Any, name: str, groups: list[str]) -> str | None:
    for g in groups:
        for prefix in spec.module_groups.get(g, ()):
            if name.startswith(prefix + "."):
                return g
    return None


def select_targets(model: nn.Module, cfg: LoraConfig, spec: Any, to_global: Callable[[str], str]) -> list[Target]:
    """The Linears of ``model`` that ``cfg`` selects; a pattern that selects nothing anywhere in the
    model is an error (``to_global``: stage-local -> whole-model names). Layers on other pipeline
    stages are simply absent here, so on a stage the list may be empty."""
    groups = list(cfg.layers)
    for g in groups:
        if g not in spec.module_groups:
            raise ConfigError(f"lora.layers: model '{spec.name}' has no module group '{g}'; it has: "
                              f"{', '.join(spec.module_groups)}")
    out: list[Target] = []
    for local, module in model.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        name = to_global(local)
        m = _LAYER.match(name)
        group = _group(spec, name, groups)
        if m is None or group is None:
            continue
        inner, layer = m.group(3), int(m.group(2))
        if not any(fnmatchcase(inner, p) or fnmatchcase(inner.rsplit(".", 1)[-1], p) for p in cfg.targets):
            continue
        wanted = cfg.layers[group]
        if wanted is None or layer in wanted:
            out.append(Target(local, name, group, layer))
    return out


def check_patterns(model: nn.Module, cfg: LoraConfig, spec: Any) -> None:
    """Every pattern names a Linear inside some layer of a chosen group (the whole model)."""
    for g in cfg.layers:
        if g not in spec.module_groups:
            raise ConfigError(f"lora.layers: model '{spec.name}' has no module group '{g}'; it has: "
                              f"{', '.join(spec.module_groups)}")
    inners: set[str] = set()
    for name, module in model.named_modules():
        m = _LAYER.match(name)
        if isinstance(module, nn.Linear) and m is not None and _group(spec, name, list(cfg.layers)):
            inners.add(m.group(3))
    for p in cfg.targets:
        if not any(fnmatchcase(i, p) or fnmatchcase(i.rsplit(".", 1)[-1], p) for i in inners):
            raise ConfigError(f"lora.targets: '{p}' matches no Linear in the layers of "
                              f"{', '.join(cfg.layers)}; they have: {', '.join(sorted(inners))}")

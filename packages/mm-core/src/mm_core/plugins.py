"""Plugin discovery and loading.

Plugins come from the entry-point group ``mm.plugins`` (installed packages), from mm-core itself
(reference kernels and the built-in loss types) and, in tests, from objects passed in process.
Each plugin is imported and called on its own: one that fails is recorded as broken with its
traceback and the others keep working. ``MM_DISABLE_PLUGINS=a,b`` skips plugins by name.
"""

from __future__ import annotations

import importlib
import os
import traceback
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from typing import Any

import pluggy

from mm_core import __version__ as core_version
from mm_core import hookspecs
from mm_core.errors import ConfigError, UnknownKeyError
from mm_core.registry import Registry
from mm_core.specs import NORMALIZE_MODES, ConverterSpec, FormatterSpec, KernelSpec, LossSpec, ModelSpec

ENTRY_POINT_GROUP = "mm.plugins"
DISABLE_ENV = "MM_DISABLE_PLUGINS"
CORE_PLUGIN = "mm-core"

# hook name -> registry attribute, in the order plugins are asked
HOOKS = {
    "mm_register_models": "models",
    "mm_register_converters": "converters",
    "mm_register_formatters": "formatters",
    "mm_register_losses": "losses",
    "mm_register_kernels": "kernels",
}


@dataclass
class PluginInfo:
    """What `mm-run plugins` shows about one plugin."""

    name: str
    version: str
    status: str  # "ok", "broken" or "disabled"
    source: str  # "core", "entry point <value>" or "in process"
    error: str | None = None
    provides: dict[str, list[str]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "status": self.status,
            "source": self.source,
            "provides": self.provides,
            "error": self.error,
        }


def disabled_plugin_names() -> set[str]:
    return {n.strip() for n in os.environ.get(DISABLE_ENV, "").split(",") if n.strip()}


class PluginManager:
    """Loads plugins once and holds the five registries they fill."""

    def __init__(self, plugins: Iterable[tuple[str, object]] = (), *, entry_points_: bool = True,
                 core: bool = True):
        self.infos: dict[str, PluginInfo] = {}
        self._pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        self._pm.add_hookspecs(hookspecs)
        broken = self.broken
        self.models: Registry[ModelSpec] = Registry("model", broken)
        self.converters: Registry[ConverterSpec] = Registry("converter", broken)
        self.formatters: Registry[FormatterSpec] = Registry("formatter", broken)
        self.losses: Registry[LossSpec] = Registry("loss type", broken)
        self.kernels: Registry[KernelSpec] = Registry("kernel", broken)
        disabled = disabled_plugin_names()
        if core:
            self._load(CORE_PLUGIN, core_version, "core", lambda: importlib.import_module("mm_core.builtin_plugin"))
        if entry_points_:
            for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
                if ep.name in disabled:
                    self.infos[ep.name] = PluginInfo(ep.name, _ep_version(ep), "disabled", f"entry point {ep.value}")
                    continue
                self._load(ep.name, _ep_version(ep), f"entry point {ep.value}", ep.load)
        for name, obj in plugins:
            if name in disabled:
                self.infos[name] = PluginInfo(name, "-", "disabled", "in process")
                continue
            self._load(name, getattr(obj, "__version__", "-"), "in process", lambda obj=obj: obj)

    # -- loading ---------------------------------------------------------------------------------

    def _load(self, name: str, version: str, source: str, importer: Callable[[], object]) -> None:
        info = PluginInfo(name, version, "ok", source)
        self.infos[name] = info
        try:
            obj = importer()
            self._pm.register(obj, name=name)
            self._check_hook_names(obj, name)
        except Exception:
            info.status, info.error = "broken", traceback.format_exc()
            return
        staged: list[tuple[str, Any]] = []
        try:
            for hook_name, registry_name in HOOKS.items():
                for impl in getattr(self._pm.hook, hook_name).get_hookimpls():
                    if impl.plugin_name == name:
                        impl.function(register=lambda item, r=registry_name: staged.append((r, item)))
            added: list[tuple[Registry, Hashable]] = []
            try:
                for registry_name, item in staged:
                    _check_spec(item, name)
                    registry = getattr(self, registry_name)
                    registry.add(item, name)
                    added.append((registry, item.key))
            except Exception:
                for registry, key in added:  # all or nothing per plugin
                    registry._entries.pop(key, None)
                raise
        except Exception:
            self._pm.unregister(name=name)
            info.status, info.error = "broken", traceback.format_exc()
            return
        for registry_name in HOOKS.values():
            provided = getattr(self, registry_name).by_plugin(name)
            if provided:
                info.provides[registry_name] = provided

    def _check_hook_names(self, obj: object, name: str) -> None:
        """Reject a plugin that implements a hook that does not exist (a typo would be silent)."""
        unknown = [
            attr for attr in dir(obj)
            if attr.startswith("mm_") and callable(getattr(obj, attr, None)) and attr not in HOOKS
            and hasattr(getattr(obj, attr), "mm_impl")
        ]
        if unknown:
            self._pm.unregister(name=name)
            raise AttributeError(
                f"plugin '{name}' implements unknown hook(s) {unknown}; known hooks: {sorted(HOOKS)}"
            )

    # -- queries ---------------------------------------------------------------------------------

    def broken(self) -> dict[str, str]:
        return {n: i.error or "" for n, i in self.infos.items() if i.status == "broken"}

    def model(self, name: str) -> ModelSpec:
        return self.models.get(name)

    def model_for_hf_config(self, hf_config: dict[str, Any], source: str = "config.json") -> ModelSpec:
        """The model spec whose HF ``model_type`` or architecture matches an HF config dict."""
        model_type = hf_config.get("model_type")
        archs = set(hf_config.get("architectures") or ())
        for spec in self.models:
            if model_type in spec.hf_model_types or archs & set(spec.hf_architectures):
                return spec
        raise UnknownKeyError(
            self.models.unknown_message(model_type or "?").replace(
                "unknown model", f"no model plugin accepts model_type '{model_type}' of {source}; unknown model", 1
            )
        )

    def converter(self, name: str) -> ConverterSpec:
        return self.converters.get(name)

    def formatter(self, name: str) -> FormatterSpec:
        return self.formatters.get(name)

    def loss(self, name: str) -> LossSpec:
        return self.losses.get(name)


def _check_spec(item: object, plugin: str) -> None:
    """What a registry cannot see from the key: a loss's ``normalize`` rule, checked at
    registration so a misspelt one fails here, not at the first training step."""
    if isinstance(item, LossSpec) and item.normalize not in NORMALIZE_MODES:
        raise ConfigError(f"plugin '{plugin}' registers loss '{item.name}' with normalize '{item.normalize}'; "
                          f"valid: {', '.join(NORMALIZE_MODES)}")


def _ep_version(ep: EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    return dist.version if dist is not None else "-"


_manager: PluginManager | None = None


def get_plugin_manager() -> PluginManager:
    """The process-wide plugin manager, loaded on first use."""
    global _manager
    if _manager is None:
        _manager = PluginManager()
    return _manager


def reset_plugin_manager(manager: PluginManager | None = None) -> None:
    """Drop (or replace) the cached manager, e.g. after installing a plugin or in tests."""
    global _manager
    _manager = manager
    from mm_core.kernels.registry import clear_kernel_cache

    clear_kernel_cache()

"""Lazy references for plugin registrations: a plugin's ``plugin.py`` must import nothing heavy
(torch models, transformers), so ``mm-run plugins`` and a broken family stay cheap and isolated."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy(module: str, attr: str) -> Callable[..., Any]:
    """A callable that imports ``module.attr`` on its first call and forwards every call to it."""

    def call(*args: Any, **kwargs: Any) -> Any:
        return getattr(importlib.import_module(module), attr)(*args, **kwargs)

    call.__qualname__ = call.__name__ = f"{module}.{attr}"
    return call


VISION_LANGUAGE_GROUPS = {  # freezable module groups of a vision-language stage model
    "vision_encoder": ("image_encoder.encoder",),
    "vision_projector": ("image_encoder.projector",),
    "text_decoder": ("text_decoder",),
}


def vision_language_spec(name: str, package: str, *, converter: str, description: str, **fields: Any) -> Any:
    """The ``ModelSpec`` of a vision-language family laid out the family-kit way: ``<package>.model``
    has ``build_model``, ``<package>.tiny`` has ``save_tiny_model``; stages are ``image_encoder`` then
    ``text_decoder`` with the standard freeze groups. ``fields`` adds or overrides spec fields."""
    from mm_core.specs import ModelSpec

    spec: dict[str, Any] = dict(builder=lazy(f"{package}.model", "build_model"), module_groups=VISION_LANGUAGE_GROUPS,
                                pipeline_modules=("image_encoder", "text_decoder"), converter=converter,
                                tiny_checkpoint=lazy(f"{package}.tiny", "save_tiny_model"), description=description)
    return ModelSpec(name=name, **{**spec, **fields})

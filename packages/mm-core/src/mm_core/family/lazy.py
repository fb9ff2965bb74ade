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

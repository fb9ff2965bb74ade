"""mm core: hooks, registries, kernels and the `mm-run` command."""

__version__ = "0.1.0"

from mm_core.hookspecs import hookimpl  # noqa: E402  (plugins write `@mm_core.hookimpl`)

__all__ = ["__version__", "hookimpl"]

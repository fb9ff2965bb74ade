"""Kernel lookup by (op, device type) with priority and availability checks."""

from __future__ import annotations

from collections.abc import Callable

from mm_core.errors import UnknownKeyError
from mm_core.specs import KernelSpec

ANY_DEVICE = "any"
OPS = ("rms_norm", "rotary", "rotary_interleaved", "attention", "swiglu", "grouped_mm")


def kernel_candidates(op: str, device_type: str) -> list[KernelSpec]:
    """Registered implementations usable for ``op`` on ``device_type``, best first.

    Device-specific kernels come before the portable reference; among them the higher priority
    wins. ``is_available`` is only called for the asked device type, so an NPU kernel's check
    (which imports torch_npu) never runs on a CPU or CUDA machine.
    """
    from mm_core.plugins import get_plugin_manager

    specs = [s for s in get_plugin_manager().kernels if s.op == op and s.device_type in (device_type, ANY_DEVICE)]
    specs.sort(key=lambda s: (s.device_type != ANY_DEVICE, s.priority), reverse=True)
    usable = []
    for spec in specs:
        try:
            ok = spec.is_available()
        except Exception:  # a broken availability check means "not available", never a crash
            ok = False
        if ok:
            usable.append(spec)
    return usable


def _lookup(op: str, device_type: str) -> Callable:
    found = kernel_candidates(op, device_type)
    if not found:
        raise UnknownKeyError(
            f"no kernel '{op}' for device '{device_type}' and no reference implementation; "
            f"known ops: {', '.join(OPS)}"
        )
    return found[0].fn


# a plain dict (not functools.cache): torch.compile reads it as a constant instead of tracing the lookup
_CHOSEN: dict[tuple[str, str], Callable] = {}


def get_kernel(op: str, device_type: str) -> Callable:
    """The implementation to use for ``op`` on ``device_type`` (looked up once, then cached)."""
    fn = _CHOSEN.get((op, device_type))
    if fn is None:
        fn = _CHOSEN[(op, device_type)] = _lookup(op, device_type)
    return fn


def resolve_kernels(device_type: str) -> None:
    """Look up every op for ``device_type`` now (before torch.compile traces the layers using them)."""
    for op in OPS:
        get_kernel(op, device_type)


def clear_kernel_cache() -> None:
    """Forget cached lookups (after plugins change)."""
    _CHOSEN.clear()

"""Kernel registry: implementations of hot ops keyed by (op, device type).

Model code calls ``get_kernel("rms_norm", x.device.type)(x, weight, eps)``; the fastest available
implementation for the device wins and the plain-PyTorch reference in ``reference.py`` is the
fallback that always exists (and what tests compare against).
"""

from mm_core.kernels.registry import OPS, get_kernel, kernel_candidates

__all__ = ["OPS", "get_kernel", "kernel_candidates"]

"""mm-core's own plugin: the reference kernels and the built-in loss types."""

from __future__ import annotations

import functools
from collections.abc import Callable

from mm_core.hookspecs import hookimpl
from mm_core.specs import KernelSpec, LossSpec


@hookimpl
def mm_register_kernels(register: Callable[[KernelSpec], None]) -> None:
    from mm_core.kernels import reference as ref

    for op, fn in (("rms_norm", ref.rms_norm), ("rotary", ref.rotary), ("rotary_interleaved", ref.rotary_interleaved),
                   ("attention", ref.attention), ("swiglu", ref.swiglu)):
        register(KernelSpec(op, "any", "reference", fn, priority=0))
    from mm_core.kernels.grouped import grouped_mm

    register(KernelSpec("grouped_mm", "any", "reference", grouped_mm, priority=0))
    from mm_core.kernels import grouped

    for device, fn in (("cuda", grouped.cuda_grouped_mm), ("cpu", grouped.cpu_grouped_mm)):
        register(KernelSpec("grouped_mm", device, "torch_grouped_mm", fn, priority=10,
                            is_available=functools.partial(grouped.native_available, device)))
    from mm_core.kernels import cuda

    register(KernelSpec("attention", "cuda", "flash_varlen", cuda.attention, priority=10,
                        is_available=cuda.varlen_available))
    from mm_core.kernels import cuda_liger  # liger_kernel is imported by the availability check only

    for op, fn in cuda_liger.LIGER_KERNELS.items():
        register(KernelSpec(op, "cuda", "liger", fn, priority=10, is_available=cuda_liger.availability(op)))
    from mm_core.kernels import cpu

    register(KernelSpec("attention", "cpu", "segment_flash", cpu.attention, priority=10))
    from mm_core.kernels import npu  # no torch_npu import here: only inside the kernels

    for op, fn in npu.NPU_KERNELS.items():
        register(KernelSpec(op, "npu", "torch_npu", fn, priority=10, is_available=npu.torch_npu_available))


@hookimpl
def mm_register_losses(register: Callable[[LossSpec], None]) -> None:
    from mm_core.losses import BUILTIN_LOSSES

    for spec in BUILTIN_LOSSES:
        register(spec)

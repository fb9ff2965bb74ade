"""Fused CUDA kernels from liger-kernel (Triton): RMSNorm, SwiGLU, rotary and the LM head with its loss.

Registered for device type ``cuda`` only; ``liger_kernel`` is imported by the availability check,
which the registry runs only when a model asks for a ``cuda`` kernel, and the check says no where
it does not import (an optional dependency: ``pip install liger-kernel``; CPU CI never loads
it, and it is imported by name, like ``torch_npu`` in ``npu.py``). Each op keeps the
contract and the numerics of its twin in ``reference.py`` and hands the cases Liger's kernels
do not cover to that twin:

- ``rms_norm``: Liger's "llama" casting (the norm in fp32, cast to the input's dtype, then
  times the weight), which is the reference's math, when input and weight share a dtype; with
  autocast's fp32 master weights over bf16 activations the reference's output is fp32, which
  Liger's is not, so those calls stay on the reference.
- ``swiglu``: Liger's SwiGLU over the fused ``[gate; up]`` tensor (no chunk copies).
- ``rotary``: Liger's rope on ``[B, H, T, D]`` (decoders; cos/sin ``[B|1, (1,) T, d]``) and on
  ``[N, H, D]`` (vision towers; cos/sin ``[N, 1, d]``), partial when ``d < D``. Qwen2.5-VL's
  multimodal rotary is this op on tables already mixed per section (``reference.mrope_cos_sin``).
  Liger reads each angle from the tables' first half: every rotate-half table here
  (``rotary_cos_sin``, ``mrope_cos_sin``, the vision towers') repeats it in the second half.
  Liger rotates its input in place, so the input is copied first where it would be written.
- ``linear_cross_entropy``: ``sum_i w_i * CE(h_i @ W^T, y_i)`` through Liger's fused linear
  cross entropy (logits never held whole), the contract of ``weighted_ce_sum``'s single-device
  path after its token selection. Not yet called by the loss: ``mm_core.losses`` would look it up.

``MM_LIGER_KERNELS=0`` (or ``off``/``false``/``none``) turns them all off; a comma-separated list
of op names keeps only those (``MM_LIGER_KERNELS=rms_norm,swiglu``). Call
``mm_core.kernels.registry.clear_kernel_cache()`` after changing it in a running process.
"""

from __future__ import annotations

import functools
import importlib
import os
from collections.abc import Callable
from typing import Any

import torch

from mm_core.kernels import reference

ENV = "MM_LIGER_KERNELS"
OFF = ("0", "off", "false", "none", "no")
IGNORE_INDEX = -100


def enabled_ops() -> set[str] | None:
    """Ops the environment allows (None: all of them)."""
    value = os.environ.get(ENV, "").strip().lower()
    if value in ("", "1", "on", "true", "all", "yes"):
        return None
    if value in OFF:
        return set()
    return {v.strip() for v in value.split(",") if v.strip()}


@functools.cache
def liger_importable() -> bool:
    """liger-kernel and its Triton kernels import (a CUDA build of Triton is there)."""
    try:
        for name in ("liger_kernel.ops.rms_norm", "liger_kernel.ops.swiglu", "liger_kernel.ops.rope",
                     "liger_kernel.ops.fused_linear_cross_entropy"):
            importlib.import_module(name)
    except Exception:  # noqa: BLE001 - a missing or broken Triton raises many kinds of errors
        return False
    return True


@functools.cache
def _liger(module: str, name: str) -> Any:
    """``liger_kernel.<module>.<name>``, imported on first use (liger-kernel is an optional dependency)."""
    return getattr(importlib.import_module(f"liger_kernel.{module}"), name)


def availability(op: str) -> Callable[[], bool]:
    """The registry's availability check of ``op``: a CUDA device, liger-kernel, and not turned off."""

    def available() -> bool:
        allowed = enabled_ops()
        return (allowed is None or op in allowed) and torch.cuda.is_available() and liger_importable()

    return available


def _plain(*tensors: torch.Tensor) -> bool:
    """Ordinary CUDA tensors (no DTensor: Liger's kernels take local tensors only)."""
    from torch.distributed.tensor import DTensor

    return all(t.is_cuda and not isinstance(t, DTensor) for t in tensors)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """``reference.rms_norm`` through Liger's kernel when ``x`` and ``weight`` share a dtype."""
    if x.dtype != weight.dtype or not _plain(x, weight):
        return reference.rms_norm(x, weight, eps)
    return _liger("ops.rms_norm", "LigerRMSNormFunction").apply(x, weight, eps, 0.0, "llama", False)


def swiglu(gate_up: torch.Tensor) -> torch.Tensor:
    """``reference.swiglu`` (silu(gate) * up of a fused ``[gate; up]``) in one Liger kernel each way."""
    if gate_up.shape[-1] % 2 or not _plain(gate_up):
        return reference.swiglu(gate_up)
    return _liger("ops.swiglu", "LigerFusedGateUpSiLUMulFunction").apply(gate_up, False)


def _heads_first(x: torch.Tensor, cos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, bool] | None:
    """(x as ``[B, H, T, D]``, cos as ``[B|1, T, d]``, whether x was a vision ``[N, H, D]``), or None
    where ``cos`` does not broadcast over the heads the way Liger reads it."""
    if x.dim() == 4 and cos.dim() <= 4:
        table = cos.reshape((1,) * (4 - cos.dim()) + tuple(cos.shape))  # as the reference broadcasts it
        if table.shape[1] == 1 and table.shape[2] == x.shape[2] and table.shape[0] in (1, x.shape[0]):
            return x, table[:, 0], False
    if x.dim() == 3 and cos.dim() == 3 and cos.shape[1] == 1 and cos.shape[0] == x.shape[0]:
        return x.transpose(0, 1).unsqueeze(0), cos.squeeze(1).unsqueeze(0), True
    return None


def rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """``reference.rotary`` (rotate-half, fp32 math, partial past ``cos.shape[-1]``) through Liger's rope."""
    d = cos.shape[-1]
    layout = _heads_first(x, cos)
    if layout is None or d % 2 or d > x.shape[-1] or sin.shape != cos.shape or not _plain(x, cos, sin):
        return reference.rotary(x, cos, sin)
    q, table, vision = layout
    sin_table = _heads_first(x, sin)[1]  # type: ignore[index]
    if q.transpose(1, 2).is_contiguous():  # Liger would rotate x's own memory: give it a copy
        q = q.clone()
    # the kernel rotates q and k together: k is one zero head of its own (a view of q could alias x), thrown away
    dummy_k = q.new_zeros(q.shape[0], 1, q.shape[2], q.shape[3])
    out, _ = _liger("ops.rope", "LigerRopeFunction").apply(q, dummy_k, table.float(), sin_table.float())
    return out.squeeze(0).transpose(0, 1) if vision else out


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                         weights: torch.Tensor) -> torch.Tensor:
    """``sum_i weights_i * CE(hidden_i @ weight^T, targets_i)`` (fp32) without holding the logits.

    ``hidden`` ``[N, H]``, ``weight`` ``[V, H]``, ``targets``/``weights`` ``[N]`` (targets -100: no
    loss). Matmuls run in autocast's dtype when it is on (as ``weighted_ce_sum`` does); equal
    weights (every loss type's common case) take Liger's sum path, whose gradients are computed in
    the forward; others its per-token path (the logits are recomputed in backward).
    """
    from mm_core.losses.cross_entropy import compute_dtype

    if hidden.shape[0] == 0:
        return (hidden.sum() * 0.0 + weight.sum() * 0.0).float()
    cd = compute_dtype(hidden, weight)
    with torch.autocast("cuda", enabled=False):
        h, w = hidden.to(cd), weight.to(cd)
        uniform = bool((weights == weights[0]).all())  # one host sync, like the loss's token selection
        reduction = "sum" if uniform else "none"
        flce = _liger("ops.fused_linear_cross_entropy", "LigerFusedLinearCrossEntropyFunction")
        ce = flce.apply(h, w, targets, None, None, IGNORE_INDEX, 0.0, 0.0, reduction, None, False, torch.float32)[0]
    if uniform:
        return ce.float() * weights[0].float()
    return (ce.float() * weights.float()).sum()


LIGER_KERNELS = {"rms_norm": rms_norm, "swiglu": swiglu, "rotary": rotary,
                 "linear_cross_entropy": linear_cross_entropy}

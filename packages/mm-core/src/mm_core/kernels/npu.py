"""Ascend NPU kernels (torch_npu fused ops).

Registered for device type ``npu`` only. ``torch_npu`` is imported inside each call and by the
availability check, which the registry runs only when a model asks for an ``npu`` kernel: on CPU
and CUDA machines this module never imports torch_npu (installing it there breaks ``import
torch`` without the Ascend toolkit). Each op has the same signature and semantics as its twin in
``reference.py``; tests check the wiring on CPU against those twins.
"""

from __future__ import annotations

import importlib
import importlib.util

import torch


def _torch_npu():
    return importlib.import_module("torch_npu")


def torch_npu_available() -> bool:
    """True when torch_npu is installed and an NPU device is present."""
    if importlib.util.find_spec("torch_npu") is None:
        return False
    _torch_npu()
    return bool(getattr(torch, "npu", None) and torch.npu.is_available())


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Fused RMSNorm (``torch_npu.npu_rms_norm`` returns (output, rstd))."""
    return _torch_npu().npu_rms_norm(x, weight, epsilon=eps)[0]


def swiglu(gate_up: torch.Tensor) -> torch.Tensor:
    """Fused silu(gate) * up over the last dimension (``[gate; up]`` halves)."""
    return _torch_npu().npu_swiglu(gate_up, dim=-1)


def rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Fused rotate-half rotary; partial rotary keeps the channels past ``cos.shape[-1]``."""
    d = cos.shape[-1]
    if d == x.shape[-1]:
        return _torch_npu().npu_rotary_mul(x, cos.to(x.dtype), sin.to(x.dtype))
    rot = _torch_npu().npu_rotary_mul(x[..., :d].contiguous(), cos.to(x.dtype), sin.to(x.dtype))
    return torch.cat((rot, x[..., d:]), dim=-1)


NPU_KERNELS = {"rms_norm": rms_norm, "swiglu": swiglu, "rotary": rotary}

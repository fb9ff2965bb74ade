"""Ascend NPU kernel for what is GLM-specific: the partial rotary on interleaved channel pairs.

Registered by mm-glm for device type ``npu`` only (op ``rotary_interleaved``, whose reference twin
is ``mm_core.kernels.reference.rotary_interleaved``). ``torch_npu`` is imported inside the call
(through mm-core's NPU module), never at import time, so CPU and CUDA machines never load it.

``torch_npu.npu_rotary_mul`` rotates halves; interleaved pairs ``(2i, 2i+1)`` are the halves of
the channels reordered evens-then-odds, so the kernel gathers the rotary channels into that order,
runs the fused rotate-half op with one copy of each pair's angle per half, and interleaves back.
"""

from __future__ import annotations

import torch

from mm_core.kernels.npu import _torch_npu


def rotary_interleaved(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Same semantics as the reference: tables ``[..., d]`` with each angle twice in a row, the
    first ``d`` channels of ``x`` rotate pairwise, the rest pass through."""
    d = cos.shape[-1]
    rot = x[..., :d]
    halves = torch.cat((rot[..., 0::2], rot[..., 1::2]), dim=-1).contiguous()
    c = torch.cat((cos[..., 0::2], cos[..., 0::2]), dim=-1).to(x.dtype)
    s = torch.cat((sin[..., 0::2], sin[..., 0::2]), dim=-1).to(x.dtype)
    out = _torch_npu().npu_rotary_mul(halves, c, s)
    out = torch.stack((out[..., : d // 2], out[..., d // 2:]), dim=-1).flatten(-2)
    return torch.cat((out, x[..., d:]), dim=-1) if x.shape[-1] > d else out

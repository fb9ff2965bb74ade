"""CUDA attention for packed rows: flash variable-length attention instead of a dense mask.

The reference kernel keeps packed samples apart with a ``[B, T, T]`` boolean mask, which costs
O(T^2) memory and sends SDPA to a masked (non-flash) kernel. Here the non-padding tokens of
all rows are gathered into one ``[N, H, D]`` sequence with cumulative sample offsets and run
through ``torch.nn.attention.varlen.varlen_attn`` (flash attention; bf16/fp16 only): work
proportional to the samples' own lengths, no mask. Anything it does not cover (fp32, no
segments, a query shorter than the keys as in cached generation, an older torch without the
function) goes to the reference kernel, which is also what the CUDA tests compare against.
"""

from __future__ import annotations

import functools
import inspect
import math
from typing import Any

import torch

from mm_core.kernels import reference
from mm_core.kernels.segments import segments_to_varlen

FLASH_DTYPES = (torch.bfloat16, torch.float16)


def varlen_available() -> bool:
    """torch ships ``varlen_attn`` (2.9+) and a CUDA device is visible."""
    if not torch.cuda.is_available():
        return False
    try:
        from torch.nn.attention.varlen import varlen_attn  # noqa: F401
    except ImportError:
        return False
    return True


_last: list[Any] = []  # [segment_ids, its version, result]: every layer of a forward reuses one layout


@torch.compiler.disable  # host syncs and a Python cache: run eagerly inside compiled layers
def cached_segments_to_varlen(segment_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """``segments_to_varlen`` once per segment tensor (its two host syncs, not once per layer)."""
    if _last and _last[0] is segment_ids and _last[1] == segment_ids._version:
        return _last[2]
    result = segments_to_varlen(segment_ids)
    _last[:] = [segment_ids, segment_ids._version, result]
    return result


@functools.cache
def _api() -> dict[str, bool]:
    """Which keywords this torch's ``varlen_attn`` takes (the API grew in 2.10+)."""
    from torch.nn.attention.varlen import varlen_attn

    names = set(inspect.signature(varlen_attn).parameters)
    return {"window_size": "window_size" in names, "scale": "scale" in names, "enable_gqa": "enable_gqa" in names}


def _call_varlen(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu: torch.Tensor, longest: int, causal: bool,
                 scale: float | None) -> torch.Tensor:
    from torch.nn.attention.varlen import varlen_attn

    api = _api()
    kwargs: dict[str, Any] = {}
    if api["window_size"]:
        kwargs["window_size"] = (-1, 0) if causal else (-1, -1)
    else:
        kwargs["is_causal"] = causal
    if k.shape[1] != q.shape[1]:
        if api["enable_gqa"]:
            kwargs["enable_gqa"] = True
        else:
            rep = q.shape[1] // k.shape[1]
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    if scale is not None:
        if api["scale"]:
            kwargs["scale"] = scale
        else:  # the default scale is 1/sqrt(D): fold the requested one into q
            q = q * (scale * math.sqrt(q.shape[-1]))
    return varlen_attn(q, k, v, cu, cu, longest, longest, **kwargs)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool,
              segment_ids: torch.Tensor | None = None, scale: float | None = None) -> torch.Tensor:
    """Same contract as ``reference.attention`` (``[B, H, T, D]`` in and out)."""
    b, h, t, d = q.shape
    if segment_ids is None or q.dtype not in FLASH_DTYPES or k.shape[2] != t or segment_ids.shape[1] != t:
        return reference.attention(q, k, v, causal=causal, segment_ids=segment_ids, scale=scale)
    index, cu, longest = cached_segments_to_varlen(segment_ids)
    if index.numel() == 0:
        return q.new_zeros(q.shape)

    def tokens(x: torch.Tensor) -> torch.Tensor:  # [B, H, T, D] -> [N, H, D] real tokens
        return x.transpose(1, 2).reshape(b * t, x.shape[1], d).index_select(0, index)

    out = _call_varlen(tokens(q), tokens(k), tokens(v), cu, longest, causal, scale)
    full = out.new_zeros(b * t, h, out.shape[-1]).index_copy(0, index, out)  # padding rows: 0 (unused)
    return full.reshape(b, t, h, -1).transpose(1, 2)

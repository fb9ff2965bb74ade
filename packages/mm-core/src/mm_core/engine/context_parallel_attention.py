"""Causal attention of a context-parallel rank's two sequence chunks against the gathered keys.

Each cp rank holds chunks ``r`` and ``2cp - 1 - r`` of the sequence (``2cp`` equal chunks; see
``context_parallel``). Its keys and values are all-gathered over the cp group (backward:
reduce-scatter of their gradients) and put back in sequence order; chunk ``j`` then attends to
keys ``[0, (j + 1) c)`` with the causal diagonal aligned bottom-right.

Two ways to compute that, the same numbers:

- one sample per row (padding after it allowed: a real token never sees a later key), CPU, a
  flash dtype: PyTorch's CPU flash kernel on two mask-free blocks per chunk (the prefix before
  the chunk, unmasked, and the chunk's own causal square), merged by their log-sum-exp; backward
  runs the kernel's backward on each block with the merged output and log-sum-exp (exact, as in
  ring attention). Memory stays linear in the sequence;
- otherwise (packed rows, other devices): the reference kernel with a dense mask over the
  chunk's key range (``reference.attention`` aligns a shorter query bottom-right), so a packed
  sample attends only within its own segment, wherever its tokens sit across the cp ranks.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from mm_core.kernels import reference

FLASH_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


# torch >= 2.14 names the flat collectives *_single (the *_tensor names warn as deprecated)
_all_gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
_reduce_scatter = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor


class _GatherChunks(torch.autograd.Function):
    """``[B, H, t, D]`` of each cp rank -> ``[cp, B, H, t, D]``; the gradient is summed back over
    the ranks and scattered (each rank's keys are used by every rank's queries)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
        ctx.group = group
        cp = dist.get_world_size(group)
        out = x.new_empty((cp * x.shape[0], *x.shape[1:]))
        _all_gather(out, x.contiguous(), group=group)
        return out.view(cp, *x.shape)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        out = grad.new_empty(grad.shape[1:])
        _reduce_scatter(out, grad.reshape(-1, *grad.shape[2:]).contiguous(), group=ctx.group)
        return out, None


def gather_sequence(x: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
    """This rank's two chunks ``[B, H, 2c, D]`` -> the whole sequence ``[B, H, 2c * cp, D]`` in order."""
    parts = _GatherChunks.apply(x, group)  # [cp, B, H, 2c, D]: rank i holds chunks i and 2cp-1-i
    cp, b, h, two_c, d = parts.shape
    parts = parts.view(cp, b, h, 2, two_c // 2, d)
    ordered = torch.cat([parts[:, :, :, 0], parts[:, :, :, 1].flip(0)])  # [2cp, B, H, c, D]
    return ordered.permute(1, 2, 0, 3, 4).reshape(b, h, cp * two_c, d)


_flash_op = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
_flash_backward = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward


class _PrefixCausalFlash(torch.autograd.Function):
    """Query chunk ``q`` ``[B, H, c, D]`` at positions ``[start, start + c)`` against keys
    ``[0, start + c)``: an unmasked prefix block and a causal diagonal block, merged exactly."""

    @staticmethod
    def forward(ctx: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
        start = k.shape[2] - q.shape[2]
        blocks = [(0, start, False), (start, k.shape[2], True)] if start else [(0, k.shape[2], True)]
        out = lse = None
        for lo, hi, causal in blocks:
            o, s = _flash_op(q, k[:, :, lo:hi], v[:, :, lo:hi], 0.0, causal, scale=scale)
            if out is None:
                out, lse = o.float(), s
                continue
            merged = torch.logaddexp(lse, s)
            out = out * (lse - merged).exp().unsqueeze(-1) + o.float() * (s - merged).exp().unsqueeze(-1)
            lse = merged
        out = out.to(q.dtype)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.blocks, ctx.scale = blocks, scale
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, None]:
        q, k, v, out, lse = ctx.saved_tensors
        dq = torch.zeros_like(q, dtype=torch.float32)
        dk, dv = torch.empty_like(k), torch.empty_like(v)
        grad = grad.contiguous()
        for lo, hi, causal in ctx.blocks:
            gq, gk, gv = _flash_backward(grad, q, k[:, :, lo:hi], v[:, :, lo:hi], out, lse, 0.0, causal,
                                         scale=ctx.scale)
            dq += gq
            dk[:, :, lo:hi], dv[:, :, lo:hi] = gk, gv
        return dq.to(q.dtype), dk, dv, None


def _use_flash(q: torch.Tensor, segment_ids: torch.Tensor | None) -> bool:
    return segment_ids is None and q.device.type == "cpu" and q.dtype in FLASH_DTYPES


def _flash_heads(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """k/v repeated to the query heads unless this torch's CPU flash kernel takes GQA natively."""
    from mm_core.kernels.cpu import native_gqa

    if k.shape[1] == q.shape[1] or native_gqa():
        return k, v
    rep = q.shape[1] // k.shape[1]
    return k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)


def chunk_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, segment_ids: torch.Tensor | None,
                    scale: float) -> torch.Tensor:
    """Queries ``[B, H, c, D]`` that are the last ``c`` positions of keys ``[B, Hkv, L, D]``; causal,
    within segments (``segment_ids`` ``[B, L]``, -1 = padding) when given."""
    if _use_flash(q, segment_ids):
        return _PrefixCausalFlash.apply(q, *_flash_heads(q, k, v), scale)
    if segment_ids is None:  # one sample per row: every key of the range is its own
        segment_ids = torch.zeros(k.shape[0], k.shape[2], dtype=torch.long, device=k.device)
    return reference.attention(q, k, v, causal=True, segment_ids=segment_ids, scale=scale)


def one_sample_per_row(segment_ids: torch.Tensor) -> bool:
    """Every row is one sample followed only by padding (ids ``0 ... 0 -1 ... -1``): plain causal
    attention is exact for its real tokens (what padding tokens compute is never used)."""
    if bool(((segment_ids != 0) & (segment_ids != -1)).any()):
        return False
    return bool((segment_ids[:, 1:] <= segment_ids[:, :-1]).all())


def context_parallel_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, segment_ids: torch.Tensor | None,
                               scale: float, group: dist.ProcessGroup, rank: int) -> torch.Tensor:
    """This rank's queries ``[B, H, 2c, D]`` (chunks ``rank`` and ``2cp-1-rank``) against every rank's
    keys; ``segment_ids`` ``[B, 2c * cp]`` are the whole sequence's (None where ``one_sample_per_row``,
    which the caller decides once per forward). Returns ``[B, H, 2c, D]``."""
    k_all, v_all = gather_sequence(k, group), gather_sequence(v, group)
    if _use_flash(q, segment_ids):  # once for both chunks (their key ranges are views of one tensor)
        k_all, v_all = _flash_heads(q, k_all, v_all)
    c = q.shape[2] // 2
    cp = k_all.shape[2] // (2 * c)
    outs = []
    for part, chunk in enumerate((rank, 2 * cp - 1 - rank)):
        end = (chunk + 1) * c
        seg = segment_ids[:, :end] if segment_ids is not None else None
        outs.append(chunk_attention(q[:, :, part * c:(part + 1) * c], k_all[:, :, :end], v_all[:, :, :end], seg,
                                    scale))
    return torch.cat(outs, dim=2)

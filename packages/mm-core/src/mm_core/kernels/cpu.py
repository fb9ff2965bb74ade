"""CPU attention for packed rows: each sample attends on its own, no dense mask.

The reference kernel keeps packed samples apart with a ``[B, T, T]`` boolean mask: every query
scores every key of its row (and causal rows cannot skip the upper triangle), so packing two
samples into a row costs more than padding them into two rows. Here each sample (or a block of
equal samples at the same place in consecutive rows, such as vision windows) is a view of q, k
and v that PyTorch's CPU flash attention runs without a mask: work proportional to the samples'
own lengths, nothing gathered, each result copied once into place.

The segmented path is a ``torch.library`` custom op with its own backward (the flash kernel's),
so ``torch.compile`` sees one opaque call per layer instead of breaking the graph on the
layout's host syncs. Cached generation (a query shorter than the keys), rows without segments and
dtypes the flash kernel lacks go to the reference, which is what the tests compare against.
"""

from __future__ import annotations

import functools
from typing import Any

import torch

from mm_core.kernels import reference
from mm_core.kernels.segments import SampleBlocks, segments_to_blocks

FLASH_DTYPES = (torch.float32, torch.bfloat16, torch.float16)

_flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
_flash_backward = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward

_last: list[Any] = []  # [segment_ids (a copy), layout]: every layer of a step reuses one layout


def cached_blocks(segment_ids: torch.Tensor) -> SampleBlocks:
    """``segments_to_blocks`` once per distinct segment tensor (compared by value: compiled graphs
    may hand the op a different tensor object for the same ids)."""
    if _last and _last[0].shape == segment_ids.shape and torch.equal(_last[0], segment_ids):
        return _last[1]
    layout = segments_to_blocks(segment_ids)
    _last[:] = [segment_ids.clone(), layout]
    return layout


@functools.cache
def native_gqa() -> bool:
    """This torch's CPU flash kernel takes fewer k/v heads than query heads (else k/v are repeated)."""
    q, kv = torch.randn(1, 2, 3, 4), torch.randn(1, 1, 3, 4)
    try:
        out = _flash(q, kv, kv, 0.0, True)[0]
    except RuntimeError:
        return False
    rep = kv.repeat_interleave(2, 1)
    return bool(torch.allclose(out, _flash(q, rep, rep, 0.0, True)[0]))


def _views(x: torch.Tensor, layout: SampleBlocks) -> list[torch.Tensor]:
    """``[B, H, T, ...]`` -> one ``[rows, H, length, ...]`` view per block (no copy)."""
    return [x[blk.row:blk.row + blk.rows, :, blk.col:blk.col + blk.length] for blk in layout.blocks]


def _scatter(parts: list[torch.Tensor], layout: SampleBlocks, full: torch.Tensor) -> torch.Tensor:
    """Write each block's result into its place in ``full`` ``[B, H, T, ...]`` (uninitialised), 0 on padding."""
    for row, col, length in layout.padding:
        full[row, :, col:col + length] = 0
    for blk, part in zip(layout.blocks, parts, strict=True):
        full[blk.row:blk.row + blk.rows, :, blk.col:blk.col + blk.length].copy_(part)
    return full


def _token_major(x: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """An empty ``[B, H, T, ...]`` laid out as ``[B, T, H, ...]``: what the projections around attention
    read and write, and fixed (the fake kernels must promise the real strides, whatever the inputs')."""
    b, h, t = x.shape[:3]
    return x.new_empty(b, t, h, *x.shape[3:], dtype=dtype or x.dtype).transpose(1, 2)


def _repeat_heads(k: torch.Tensor, v: torch.Tensor, q_heads: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    rep = q_heads // k.shape[1]
    if rep == 1 or native_gqa():
        return k, v, 1
    return k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1), rep


@torch.library.custom_op("mm::cpu_segment_attention", mutates_args=())
def segment_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, segment_ids: torch.Tensor, causal: bool,
                      scale: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(output ``[B, H, T, D]``, log-sum-exp ``[B, H, T]`` fp32 for the backward) per sample."""
    layout = cached_blocks(segment_ids)
    outs, lses = [], []
    for qb, kb, vb in zip(_views(q, layout), _views(k, layout), _views(v, layout), strict=True):
        kb, vb, _ = _repeat_heads(kb, vb, qb.shape[1])
        out, lse = _flash(qb, kb, vb, 0.0, causal, scale=scale)
        outs.append(out)
        lses.append(lse)
    full, full_lse = _token_major(q), _token_major(q[..., 0], torch.float32)
    if len(outs) == 1 and outs[0].shape == q.shape and outs[0].stride() == full.stride() \
            and lses[0].stride() == full_lse.stride():  # one block is the whole batch: no copy
        return outs[0], lses[0]
    return _scatter(outs, layout, full), _scatter(lses, layout, full_lse)


@segment_attention.register_fake
def _(q, k, v, segment_ids, causal, scale):
    return _token_major(q), _token_major(q[..., 0], torch.float32)


@torch.library.custom_op("mm::cpu_segment_attention_backward", mutates_args=())
def segment_attention_backward(grad: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                               out: torch.Tensor, lse: torch.Tensor, segment_ids: torch.Tensor, causal: bool,
                               scale: float | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dq, dk, dv) from the flash kernel's backward on each block."""
    layout = cached_blocks(segment_ids)
    dqs, dks, dvs = [], [], []
    parts = (_views(x, layout) for x in (grad, q, k, v, out, lse))
    for gb, qb, kb, vb, ob, lb in zip(*parts, strict=True):
        kb, vb, rep = _repeat_heads(kb, vb, qb.shape[1])
        dq, dk, dv = _flash_backward(gb, qb, kb, vb, ob, lb, 0.0, causal, scale=scale)
        if rep > 1:  # fold the repeated heads' gradients back onto their k/v head
            n, _, length, d = dk.shape
            dk, dv = (x.view(n, -1, rep, length, d).sum(2) for x in (dk, dv))
        dqs.append(dq)
        dks.append(dk)
        dvs.append(dv)
    return tuple(_scatter(grads, layout, _token_major(x)) for grads, x in ((dqs, q), (dks, k), (dvs, v)))


@segment_attention_backward.register_fake
def _(grad, q, k, v, out, lse, segment_ids, causal, scale):
    return _token_major(q), _token_major(k), _token_major(v)


def _setup(ctx: Any, inputs: tuple, output: tuple) -> None:
    q, k, v, segment_ids, causal, scale = inputs
    ctx.save_for_backward(q, k, v, output[0], output[1], segment_ids)
    ctx.causal, ctx.scale = causal, scale
    ctx.set_materialize_grads(False)  # the log-sum-exp output gets no gradient: no zero tensor for it


def _backward(ctx: Any, grad: torch.Tensor | None, _grad_lse: torch.Tensor | None) -> tuple:
    if grad is None:
        return None, None, None, None, None, None
    q, k, v, out, lse, segment_ids = ctx.saved_tensors
    dq, dk, dv = segment_attention_backward(grad, q, k, v, out, lse, segment_ids, ctx.causal, ctx.scale)
    return dq, dk, dv, None, None, None


segment_attention.register_autograd(_backward, setup_context=_setup)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool,
              segment_ids: torch.Tensor | None = None, scale: float | None = None) -> torch.Tensor:
    """Same contract as ``reference.attention`` (``[B, H, T, D]`` in and out); padding outputs are 0."""
    t = q.shape[2]
    if (segment_ids is None or q.dtype not in FLASH_DTYPES or k.shape[2] != t or segment_ids.shape[1] != t
            or q.shape[1] % k.shape[1]):
        return reference.attention(q, k, v, causal=causal, segment_ids=segment_ids, scale=scale)
    return segment_attention(q, k, v, segment_ids, causal, scale)[0]

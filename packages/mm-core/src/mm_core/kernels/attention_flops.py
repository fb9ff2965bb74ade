"""FLOP counts of the CPU attention kernels, for ``torch.utils.flop_counter.FlopCounterMode``.

Torch has no formula for its CPU flash attention and cannot see inside ``mm::cpu_segment_attention``,
so a FLOP count of a CPU training step silently leaves attention out: the one part of a step that
packing does not shrink (each sample attends to itself, packed or padded), which makes packing's
FLOP advantage look larger than it is. These formulas count what the kernels compute: torch's SDPA
convention of 2 matmuls forward and 5 backward (the scores recomputed), each over the query-key
pairs a query attends to; causal rows count the lower triangle only, which the flash kernels skip.

    FlopCounterMode(custom_mapping=flop_formulas())
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from mm_core.kernels.segments import segments_to_blocks


def attended_pairs(q_len: int, k_len: int, causal: bool) -> int:
    """Query-key pairs of one ``q_len`` x ``k_len`` attention; causal is torch's top-left ``tril``."""
    if not causal:
        return q_len * k_len
    full = min(q_len, k_len)  # query i sees keys 0..i while i < k_len, then every key
    return full * (full + 1) // 2 + (q_len - full) * k_len


def segment_pairs(segment_ids: torch.Tensor, causal: bool) -> int:
    """Query-key pairs of packed rows (``[B, T]``, -1 padding): each sample with itself only."""
    return sum(blk.rows * attended_pairs(blk.length, blk.length, causal)
               for blk in segments_to_blocks(segment_ids).blocks)


def attention_flops(pairs: int, heads: int, qk_dim: int, v_dim: int, *, backward: bool = False) -> int:
    """FLOPs of ``pairs`` query-key pairs per head: forward ``q k^T`` and ``p v``; backward the scores
    again, ``dP``, ``dV``, ``dQ`` and ``dK`` (torch's ``sdpa_backward_flop_count``)."""
    per_pair = 3 * qk_dim + 2 * v_dim if backward else qk_dim + v_dim
    return 2 * pairs * heads * per_pair


def _dense_pairs(q: torch.Tensor, k: torch.Tensor, causal: bool, mask: torch.Tensor | None) -> int:
    """Pairs of a ``[B, H, Tq, D]`` call: a mask is applied, not skipped, so every pair counts."""
    return q.shape[0] * attended_pairs(q.shape[2], k.shape[2], causal and mask is None)


def _raw(fn: Callable[..., int]) -> Callable[..., int]:
    fn._get_raw = True  # type: ignore[attr-defined]  # FlopCounterMode: pass tensors, not shapes
    return fn


@_raw
def _flash_forward(q, k, v, dropout_p=0.0, is_causal=False, *args, attn_mask=None, out_val=None, **kwargs) -> int:
    return attention_flops(_dense_pairs(q, k, is_causal, attn_mask), q.shape[1], q.shape[3], v.shape[3])


@_raw
def _flash_backward(grad, q, k, v, out, lse, dropout_p=0.0, is_causal=False, *args, attn_mask=None, out_val=None,
                    **kwargs) -> int:
    return attention_flops(_dense_pairs(q, k, is_causal, attn_mask), q.shape[1], q.shape[3], v.shape[3],
                           backward=True)


@_raw
def _segment_forward(q, k, v, segment_ids, causal, scale, *, out_val=None) -> int:
    return attention_flops(segment_pairs(segment_ids, causal), q.shape[1], q.shape[3], v.shape[3])


@_raw
def _segment_backward(grad, q, k, v, out, lse, segment_ids, causal, scale, *, out_val=None) -> int:
    return attention_flops(segment_pairs(segment_ids, causal), q.shape[1], q.shape[3], v.shape[3], backward=True)


def flop_formulas() -> dict[Any, Callable[..., int]]:
    """``custom_mapping`` for ``FlopCounterMode``: torch's CPU flash attention and mm's segment attention."""
    import mm_core.kernels.cpu  # noqa: F401  (defines the mm:: ops)

    aten = torch.ops.aten
    return {aten._scaled_dot_product_flash_attention_for_cpu: _flash_forward,
            aten._scaled_dot_product_flash_attention_for_cpu_backward: _flash_backward,
            torch.ops.mm.cpu_segment_attention: _segment_forward,
            torch.ops.mm.cpu_segment_attention_backward: _segment_backward}

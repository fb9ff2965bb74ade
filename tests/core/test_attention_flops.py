"""FLOP counts of the CPU attention kernels (mm_core.kernels.attention_flops) through torch's
FlopCounterMode, against the pairs the reference kernel's dense mask allows and torch's own SDPA
formulas."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from mm_core.kernels import cpu
from mm_core.kernels.attention_flops import attended_pairs, flop_formulas

SEGMENTS = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1, 2, -1, -1],   # packed, then padding
                         [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],      # one sample fills the row
                         [-1, -1, 0, 0, 0, 0, 1, 1, 1, 1, 1]])   # left padding


def _mask_pairs(seg: torch.Tensor, causal: bool) -> int:
    """Query-key pairs the reference's ``[B, T, T]`` mask keeps (real queries only)."""
    t = seg.shape[1]
    keep = (seg[:, :, None] == seg[:, None, :]) & (seg >= 0)[:, :, None]
    if causal:
        keep &= torch.ones(t, t, dtype=torch.bool).tril()
    return int(keep.sum())


def _counts(fn) -> dict:
    with FlopCounterMode(display=False, custom_mapping=flop_formulas()) as counter:
        fn()
    return {str(op): n for op, n in counter.get_flop_counts()["Global"].items()}


@pytest.mark.parametrize("causal", [True, False])
def test_segment_attention_counts_the_pairs_the_mask_allows(causal):
    heads, kv_heads, d = 4, 2, 8
    g = torch.Generator().manual_seed(0)
    b, t = SEGMENTS.shape
    q, k, v = (torch.randn(b, n, t, d, generator=g).requires_grad_() for n in (heads, kv_heads, kv_heads))

    counts = _counts(lambda: cpu.attention(q, k, v, causal=causal, segment_ids=SEGMENTS).sum().backward())
    pairs = _mask_pairs(SEGMENTS, causal)
    assert counts["mm.cpu_segment_attention"] == 2 * pairs * heads * 2 * d  # q k^T, p v
    assert counts["mm.cpu_segment_attention_backward"] == 2 * pairs * heads * 5 * d  # scores again, dP, dV, dQ, dK


def test_cpu_flash_attention_matches_torchs_formula_without_causal_and_halves_with_it():
    q, k, v = (torch.randn(2, n, 12, 16).requires_grad_() for n in (4, 4, 4))
    full = _counts(lambda: F.scaled_dot_product_attention(q, k, v).sum().backward())
    assert full["aten._scaled_dot_product_flash_attention_for_cpu"] == sdpa_flop_count(q.shape, k.shape, v.shape)
    assert full["aten._scaled_dot_product_flash_attention_for_cpu_backward"] == \
        sdpa_backward_flop_count(q.shape, q.shape, k.shape, v.shape)
    causal = _counts(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True).sum().backward())
    for op, n in full.items():
        assert causal[op] * 12 * 12 == n * (12 * 13 // 2)


@pytest.mark.parametrize(("q_len", "k_len"), [(5, 5), (5, 3), (3, 5), (1, 4)])
def test_causal_pairs_are_torchs_top_left_triangle(q_len, k_len):
    assert attended_pairs(q_len, k_len, True) == int(torch.ones(q_len, k_len).tril().sum())
    assert attended_pairs(q_len, k_len, False) == q_len * k_len

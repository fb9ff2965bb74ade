"""Features whose torch API changed inside the declared range (torch>=2.11) take either path.

``varlen_attn`` (the CUDA flash kernel for packed rows) gained ``enable_gqa`` after 2.11; the
kernel reads the signature and repeats the k/v heads itself when the keyword is missing. Both
signatures are exercised here on CPU with a stand-in ``varlen_attn`` (a per-sample SDPA), so the
fallback is tested on every machine, whichever torch is installed; tests/cuda runs the real one.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mm_core.kernels import cuda, reference


def _per_sample_sdpa(q, k, v, cu_q, cu_k, max_q, max_k, *, scale=None, window_size=(-1, -1), gqa=False):
    """What flash varlen computes on ``[N, H, D]`` tokens, one sample (cu range) at a time."""
    if k.shape[1] != q.shape[1]:
        if not gqa:
            raise RuntimeError("stand-in varlen_attn: k/v heads differ from q heads without enable_gqa")
        rep = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    causal = tuple(window_size) == (-1, 0)
    out = torch.empty_like(q)
    bounds = cu_q.tolist()
    for a, b in zip(bounds[:-1], bounds[1:]):
        qs, ks, vs = (x[a:b].transpose(0, 1).float() for x in (q, k, v))
        out[a:b] = F.scaled_dot_product_attention(qs, ks, vs, is_causal=causal, scale=scale).transpose(0, 1).to(q.dtype)
    return out


def varlen_2_11(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, return_aux=None, scale=None,
                window_size=(-1, -1)):
    """torch 2.11's signature: no ``enable_gqa``."""
    return _per_sample_sdpa(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, scale=scale, window_size=window_size)


def varlen_2_14(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, return_aux=None, scale=None,
                window_size=(-1, -1), enable_gqa=False, seqused_k=None, block_table=None, num_splits=None):
    """torch 2.14's signature: ``enable_gqa`` and paged-cache keywords."""
    return _per_sample_sdpa(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, scale=scale,
                            window_size=window_size, gqa=enable_gqa)


@pytest.mark.parametrize("fake", [varlen_2_11, varlen_2_14], ids=["torch2.11-api", "torch2.14-api"])
@pytest.mark.parametrize("causal", [True, False])
def test_varlen_attention_takes_either_signature(monkeypatch, fake, causal):
    pytest.importorskip("torch.nn.attention.varlen")
    monkeypatch.setattr(torch.nn.attention.varlen, "varlen_attn", fake)
    cuda._api.cache_clear()
    monkeypatch.setattr(cuda, "_last", [])  # the segment-layout cache: start clean
    try:
        g = torch.Generator().manual_seed(0)
        q = torch.randn(2, 4, 7, 8, generator=g).to(torch.bfloat16)
        k, v = (torch.randn(2, 2, 7, 8, generator=g).to(torch.bfloat16) for _ in range(2))  # GQA: 4 q / 2 kv heads
        seg = torch.tensor([[0, 0, 0, 1, 1, 1, 1], [0, 0, 0, 0, 0, -1, -1]])
        got = cuda.attention(q, k, v, causal=causal, segment_ids=seg, scale=0.3)
        want = reference.attention(q.float(), k.float(), v.float(), causal=causal, segment_ids=seg, scale=0.3)
        real = seg >= 0  # padding rows are unused (the kernel writes zeros there)
        torch.testing.assert_close(got.float().transpose(1, 2)[real], want.transpose(1, 2)[real], rtol=2e-2, atol=2e-2)
        assert cuda._api()["enable_gqa"] is (fake is varlen_2_14)
    finally:
        cuda._api.cache_clear()

"""The CPU attention kernel for packed rows against the masked reference: values, gradients,
the fallbacks, its place in the registry, and torch.compile."""

from __future__ import annotations

import pytest
import torch

from mm_core.kernels import cpu, get_kernel, reference
from mm_core.kernels.registry import clear_kernel_cache
from mm_core.kernels.segments import Block, segments_to_blocks


def _rows(*rows: list[int], pad: int = -1) -> torch.Tensor:
    """Segment ids from per-row sample lengths (a negative length is that much padding)."""
    out = []
    for lengths in rows:
        ids, n = [], 0
        for length in lengths:
            ids += [pad] * -length if length < 0 else [n] * length
            n += length > 0
        out.append(ids)
    return torch.tensor(out)


MIXES = {
    "packed_with_padding": _rows([3, 5, 4, -2], [5, 5, 4]),
    "padded_one_per_row": _rows([9, -5], [14], [2, -12]),
    "left_padding": _rows([-4, 10], [14]),
    "windows_alike": _rows([7, 7], [7, 7], [7, 7], [5, -9]),  # equal samples of consecutive rows: one view
    "lone_tokens_and_empty_row": _rows([1, 1, 12], [-14]),
}


def _inputs(seg: torch.Tensor, heads: int, kv_heads: int, dtype=torch.float32, d: int = 8):
    g = torch.Generator().manual_seed(0)
    b, t = seg.shape
    q, k, v = (torch.randn(b, n, t, d, generator=g).to(dtype).requires_grad_() for n in (heads, kv_heads, kv_heads))
    real = (seg >= 0)[:, None, :, None]
    grad = torch.randn(b, heads, t, d, generator=g).to(dtype) * real  # padding outputs feed nothing
    return q, k, v, grad, real


def _run(kernel, q, k, v, grad, seg, causal, scale):
    out = kernel(q, k, v, causal=causal, segment_ids=seg, scale=scale)
    return (out, *torch.autograd.grad(out, (q, k, v), grad))


@pytest.mark.parametrize("mix", list(MIXES))
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize(("heads", "kv_heads"), [(4, 4), (4, 2)])
@pytest.mark.parametrize("scale", [None, 0.3])
def test_matches_reference_forward_and_backward(mix, causal, heads, kv_heads, scale):
    seg = MIXES[mix]
    q, k, v, grad, real = _inputs(seg, heads, kv_heads)
    out, dq, dk, dv = _run(cpu.attention, q, k, v, grad, seg, causal, scale)
    ref, rq, rk, rv = _run(reference.attention, q, k, v, grad, seg, causal, scale)
    torch.testing.assert_close(out * real, ref * real)
    assert not (out * ~real).any()  # padding rows: 0, never NaN
    torch.testing.assert_close(dq, rq)
    torch.testing.assert_close(dk, rk)
    torch.testing.assert_close(dv, rv)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_close_to_reference_in_fp32(dtype):
    seg = MIXES["packed_with_padding"]
    q, k, v, grad, real = _inputs(seg, 4, 2, dtype)
    out, dq, _, _ = _run(cpu.attention, q, k, v, grad, seg, True, None)
    assert out.dtype == dtype
    q32, k32, v32 = (x.detach().float().requires_grad_() for x in (q, k, v))
    ref, rq, _, _ = _run(reference.attention, q32, k32, v32, grad.float(), seg, True, None)
    torch.testing.assert_close((out * real).float(), ref * real, atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(dq.float(), rq, atol=5e-2, rtol=5e-2)


def test_cached_generation_and_rows_without_segments_use_the_reference():
    q, k, v, _, _ = _inputs(_rows([6]), 2, 2)
    seg = torch.tensor([[-1, -1, 0, 0, 0, 0]])
    one = q[:, :, -1:]
    assert torch.equal(cpu.attention(one, k, v, causal=True, segment_ids=seg),
                       reference.attention(one, k, v, causal=True, segment_ids=seg))
    assert torch.equal(cpu.attention(q, k, v, causal=True), reference.attention(q, k, v, causal=True))


def test_blocks_are_views_of_equal_samples_and_padding_runs():
    layout = segments_to_blocks(MIXES["windows_alike"])
    assert layout.blocks == (Block(row=3, rows=1, col=0, length=5), Block(row=0, rows=3, col=0, length=7),
                             Block(row=0, rows=3, col=7, length=7))
    assert layout.padding == ((3, 5, 9),)
    layout = segments_to_blocks(MIXES["lone_tokens_and_empty_row"])
    assert [(b.row, b.col, b.length) for b in layout.blocks] == [(0, 0, 1), (0, 1, 1), (0, 2, 12)]
    assert layout.padding == ((1, 0, 14),)


def test_registry_picks_it_on_cpu_and_any_is_still_the_reference():
    clear_kernel_cache()
    try:
        assert get_kernel("attention", "cpu") is cpu.attention
        assert get_kernel("attention", "any") is reference.attention
    finally:
        clear_kernel_cache()


def test_custom_op_contract():
    """Fake kernels promise the real shapes and strides; autograd goes through the registered backward."""
    seg = MIXES["packed_with_padding"]
    q, k, v, _, _ = _inputs(seg, 4, 2)
    torch.library.opcheck(cpu.segment_attention, (q, k, v, seg, True, 0.3))


def test_compiles_without_graph_breaks():
    """Compiled layers call the kernel: the segmented path is one opaque op (fullgraph) with the same
    values and gradients as eager."""
    seg = MIXES["packed_with_padding"]
    q, k, v, grad, _ = _inputs(seg, 4, 2)

    def layer(q, k, v, seg):
        return cpu.attention(q * 2, k, v, causal=True, segment_ids=seg, scale=None) + 1

    torch._dynamo.reset()
    compiled = torch.compile(layer, backend="aot_eager", fullgraph=True)
    got = _run(lambda q, k, v, **kw: compiled(q, k, v, kw["segment_ids"]), q, k, v, grad, seg, True, None)
    want = _run(lambda q, k, v, **kw: layer(q, k, v, kw["segment_ids"]), q, k, v, grad, seg, True, None)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b)

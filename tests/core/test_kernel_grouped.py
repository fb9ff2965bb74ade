"""The CPU ``grouped_mm`` kernel (``torch._grouped_mm``) against the reference loop: bit-exact in
fp32 and bf16, forward and backward (including experts without rows, a transposed weight and the
expanded gradient ``out.sum()`` sends), and the loop wherever its layout rules do not hold."""

from __future__ import annotations

import pytest
import torch

from mm_core.kernels import get_kernel, grouped
from mm_core.kernels.registry import clear_kernel_cache


def _case(t: int, k: int, n: int, e: int, dtype: torch.dtype, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(t, k, generator=g).to(dtype)
    w = torch.randn(e, k, n, generator=g).to(dtype)
    counts = torch.bincount(torch.randint(0, e, (t,), generator=g), minlength=e)
    counts[1] = 0  # an expert without rows
    counts[0] = t - counts[1:].sum()
    return x, w, counts


def _forward_backward(fn, x: torch.Tensor, w: torch.Tensor, counts: torch.Tensor, grad: torch.Tensor | None):
    x, w = x.clone().requires_grad_(), w.clone().requires_grad_()
    out = fn(x, w, counts)
    (out.sum() if grad is None else (out * grad).sum()).backward()
    return out.detach(), x.grad, w.grad


@pytest.fixture(autouse=True)
def _fresh_cache():
    clear_kernel_cache()
    yield
    clear_kernel_cache()


def test_cpu_kernel_is_torch_grouped_mm_when_this_torch_has_it() -> None:
    want = grouped.cpu_grouped_mm if grouped.native_available("cpu") else grouped.grouped_mm
    assert get_kernel("grouped_mm", "cpu") is want
    assert get_kernel("grouped_mm", "npu") is grouped.grouped_mm  # no torch_npu: the reference


@pytest.mark.skipif(not grouped.native_available("cpu"), reason="this torch has no CPU torch._grouped_mm")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("transposed", [False, True])
def test_cpu_torch_grouped_mm_is_the_loop_bit_for_bit(dtype: torch.dtype, transposed: bool,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    native = torch._grouped_mm
    monkeypatch.setattr(torch, "_grouped_mm", lambda *a, **kw: calls.append(1) or native(*a, **kw))
    x, w, counts = _case(37, 64, 96, 5, dtype)
    if transposed:  # [E, N, K] stored, seen as [E, K, N]: column-major operands are allowed
        w = w.transpose(1, 2).contiguous().transpose(1, 2)
    grad = torch.randn(37, 96).to(dtype)
    for g in (None, grad):  # None: out.sum()'s expanded (zero-stride) gradient
        got = _forward_backward(grouped.cpu_grouped_mm, x, w, counts, g)
        want = _forward_backward(grouped.grouped_mm, x, w, counts, g)
        for a, b, what in zip(got, want, ("output", "x grad", "weight grad")):
            assert torch.equal(a, b), f"{dtype} {what}: differs by {float((a.float() - b.float()).abs().max())}"
    assert calls, "the kernel never called torch._grouped_mm"


@pytest.mark.parametrize("case", ["k_unaligned", "fp16", "no_rows"])
def test_cpu_kernel_falls_back_to_the_loop_where_the_rules_do_not_hold(case: str,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*a, **kw):
        raise AssertionError("torch._grouped_mm called outside its rules")

    monkeypatch.setattr(torch, "_grouped_mm", refuse)
    t, k, dtype = {"k_unaligned": (9, 6, torch.float32), "fp16": (9, 8, torch.float16),
                   "no_rows": (0, 8, torch.float32)}[case]
    x, w, counts = _case(max(t, 1), k, 8, 3, dtype)
    if t == 0:
        x, counts = x[:0], torch.zeros(3, dtype=torch.long)
    torch.testing.assert_close(grouped.cpu_grouped_mm(x, w, counts), grouped.grouped_mm(x, w, counts), rtol=0, atol=0)

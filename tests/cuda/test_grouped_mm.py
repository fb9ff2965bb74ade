"""The ``cuda`` grouped GEMM kernel (``torch._grouped_mm`` for bf16) against the reference loop on
the GPU (skipped where no CUDA device is visible, e.g. in CI; run with ``pytest tests/cuda``).

bf16 CUTLASS and cuBLAS both accumulate in fp32 but in other orders, so outputs and gradients are
compared with bf16 tolerances against the loop run on the same bf16 operands, and both against an
fp32 loop; the kernel must have called ``torch._grouped_mm`` (not fallen back). fp32 operands,
unaligned widths and an empty batch take the loop, bit for bit.
"""

from __future__ import annotations

import pytest
import torch

from mm_core.kernels import grouped

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(autouse=True)
def no_tf32():
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32 = old


def _case(t: int, k: int, n: int, e: int, dtype: torch.dtype):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(t, k, generator=g).to("cuda", dtype)
    w = (torch.randn(e, k, n, generator=g) / k**0.5).to("cuda", dtype)
    counts = torch.bincount(torch.randint(0, e, (t,), generator=g), minlength=e)
    counts[0], counts[1] = counts[0] + counts[1], 0  # an expert without rows
    return x, w, counts.cuda()


def _forward_backward(fn, x, w, counts, grad):
    x, w = x.clone().requires_grad_(), w.clone().requires_grad_()
    out = fn(x, w, counts)
    (out * grad).sum().backward()
    return out.detach(), x.grad, w.grad


def test_cuda_kernel_is_registered_and_available() -> None:
    from mm_core.kernels import get_kernel
    from mm_core.kernels.registry import clear_kernel_cache

    clear_kernel_cache()
    assert grouped.native_available("cuda"), "torch._grouped_mm does not run on this GPU in bf16"
    assert get_kernel("grouped_mm", "cuda") is grouped.cuda_grouped_mm


@pytest.mark.parametrize("transposed", [False, True])
def test_cuda_bf16_grouped_mm_matches_the_loop_forward_and_backward(transposed: bool,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    native = torch._grouped_mm
    monkeypatch.setattr(torch, "_grouped_mm", lambda *a, **kw: calls.append(1) or native(*a, **kw))
    x, w, counts = _case(1000, 256, 384, 8, torch.bfloat16)
    if transposed:
        w = w.transpose(1, 2).contiguous().transpose(1, 2)
    grad = torch.randn(1000, 384, device="cuda").to(torch.bfloat16)
    got = _forward_backward(grouped.cuda_grouped_mm, x, w, counts, grad)
    assert calls, "bf16 operands that fit its rules did not reach torch._grouped_mm"
    loop = _forward_backward(grouped.grouped_mm, x, w, counts, grad)
    exact = _forward_backward(grouped.grouped_mm, x.float(), w.float(), counts, grad.float())
    for a, b, c, what in zip(got, loop, exact, ("output", "x grad", "weight grad")):
        assert a.dtype == torch.bfloat16
        torch.testing.assert_close(a.float(), b.float(), rtol=2e-2, atol=2e-2, msg=lambda m, w=what: f"{w}: {m}")
        # no further from the fp32 result than the loop is (a few bf16 roundings)
        err, ref_err = (a.float() - c).abs().max(), (b.float() - c).abs().max()
        assert err <= 2 * ref_err + 1e-3, f"{what}: {float(err)} from fp32, the loop {float(ref_err)}"


@pytest.mark.parametrize("case", ["fp32", "k_unaligned", "no_rows"])
def test_cuda_kernel_takes_the_loop_outside_its_rules(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*a, **kw):
        raise AssertionError("torch._grouped_mm called outside the kernel's rules")

    monkeypatch.setattr(torch, "_grouped_mm", refuse)
    t, k, dtype = {"fp32": (64, 64, torch.float32), "k_unaligned": (64, 6, torch.bfloat16),
                   "no_rows": (1, 64, torch.bfloat16)}[case]
    x, w, counts = _case(t, k, 32, 4, dtype)
    if case == "no_rows":
        x, counts = x[:0], torch.zeros(4, dtype=torch.long, device="cuda")
    assert torch.equal(grouped.cuda_grouped_mm(x, w, counts), grouped.grouped_mm(x, w, counts))

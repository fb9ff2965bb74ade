"""NPU kernels: registered, never imported off-NPU, and wired like their CPU reference twins."""

from __future__ import annotations

import sys
import types

import pytest
import torch

from mm_core.kernels import get_kernel, reference
from mm_core.kernels.registry import clear_kernel_cache


@pytest.fixture(autouse=True)
def _fresh_cache():
    clear_kernel_cache()
    yield
    clear_kernel_cache()


def test_cpu_and_cuda_lookups_never_import_torch_npu():
    """cpu gets the references (attention: its per-sample kernel); cuda its own flash varlen attention
    where this machine can run it (torch with varlen_attn and a visible GPU), else the reference;
    never an NPU kernel."""
    from mm_core.kernels import cpu, cuda

    assert "torch_npu" not in sys.modules
    cuda_attention = cuda.attention if cuda.varlen_available() else reference.attention
    for op in ("rms_norm", "swiglu", "rotary", "attention"):
        assert get_kernel(op, "cpu") is (cpu.attention if op == "attention" else getattr(reference, op))
        assert get_kernel(op, "cuda") is (cuda_attention if op == "attention" else getattr(reference, op))
    assert "torch_npu" not in sys.modules


def test_npu_without_torch_npu_falls_back_to_reference():
    assert get_kernel("rms_norm", "npu") is reference.rms_norm


@pytest.fixture()
def fake_torch_npu(monkeypatch):
    """A stand-in torch_npu whose fused ops are computed by the reference twins."""
    fake = types.ModuleType("torch_npu")
    fake.__spec__ = types.SimpleNamespace(name="torch_npu")
    fake.npu_rms_norm = lambda x, w, epsilon: (reference.rms_norm(x, w, epsilon), None)
    fake.npu_swiglu = lambda x, dim: reference.swiglu(x)
    fake.npu_rotary_mul = lambda x, c, s: reference.rotary(x, c, s)
    monkeypatch.setitem(sys.modules, "torch_npu", fake)
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: object() if name == "torch_npu" else None)
    monkeypatch.setattr(torch, "npu", types.SimpleNamespace(is_available=lambda: True), raising=False)
    return fake


def test_npu_kernels_win_on_npu_and_match_reference(fake_torch_npu):
    from mm_core.kernels import npu

    assert get_kernel("rms_norm", "npu") is npu.rms_norm
    assert get_kernel("attention", "npu") is reference.attention  # no fused attention registered
    x, w = torch.randn(2, 5, 8), torch.randn(8)
    assert torch.equal(get_kernel("rms_norm", "npu")(x, w, 1e-6), reference.rms_norm(x, w, 1e-6))
    gu = torch.randn(3, 10)
    assert torch.equal(get_kernel("swiglu", "npu")(gu), reference.swiglu(gu))
    q = torch.randn(1, 2, 4, 8)
    cos, sin = reference.rotary_cos_sin(torch.arange(4), 4, 10000.0)
    assert torch.allclose(get_kernel("rotary", "npu")(q, cos, sin), reference.rotary(q, cos, sin))

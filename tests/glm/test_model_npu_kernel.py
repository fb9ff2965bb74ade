"""mm-glm's NPU kernel (interleaved partial rotary): registered for npu only, never imported off-NPU,
and equal to its CPU reference twin with torch_npu stood in by the reference rotate-half op."""

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


@pytest.fixture()
def fake_torch_npu(monkeypatch):
    fake = types.ModuleType("torch_npu")
    fake.__spec__ = types.SimpleNamespace(name="torch_npu")
    fake.npu_rotary_mul = lambda x, c, s: reference.rotary(x, c, s)  # fused rotate-half
    monkeypatch.setitem(sys.modules, "torch_npu", fake)
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: object() if name == "torch_npu" else None)
    monkeypatch.setattr(torch, "npu", types.SimpleNamespace(is_available=lambda: True), raising=False)
    return fake


def test_cpu_and_cuda_get_the_reference_without_torch_npu() -> None:
    assert "torch_npu" not in sys.modules
    assert get_kernel("rotary_interleaved", "cpu") is reference.rotary_interleaved
    assert get_kernel("rotary_interleaved", "cuda") is reference.rotary_interleaved
    assert get_kernel("rotary_interleaved", "npu") is reference.rotary_interleaved  # no torch_npu here
    assert "torch_npu" not in sys.modules


@pytest.mark.parametrize("rotary_dim", [16, 32])  # partial (GLM: half of head_dim) and full
def test_npu_kernel_wins_on_npu_and_matches_reference(fake_torch_npu, rotary_dim: int) -> None:
    from mm_glm import kernels_npu
    from mm_glm.rope_index import mrope_cos_sin_interleaved

    assert get_kernel("rotary_interleaved", "npu") is kernels_npu.rotary_interleaved
    sections = {16: (2, 3, 3), 32: (4, 6, 6)}[rotary_dim]  # GLM's 8:12:12 split of rotary_dim / 2
    cos, sin = mrope_cos_sin_interleaved(torch.randint(0, 40, (3, 2, 5)), rotary_dim, 10000.0, sections)
    q = torch.randn(2, 4, 5, 32)
    want = reference.rotary_interleaved(q, cos[:, None], sin[:, None])
    torch.testing.assert_close(get_kernel("rotary_interleaved", "npu")(q, cos[:, None], sin[:, None]), want)

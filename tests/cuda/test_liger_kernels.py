"""Liger's fused CUDA kernels (mm_core/kernels/cuda_liger.py) against the reference ops, forward and
backward, on a CUDA device with liger-kernel installed (skipped elsewhere, e.g. in CI).

Errors are ||out - ref|| / ||ref|| against the reference op run in float64 on the same inputs.
Tolerances: fp32 1e-5 (the same math in another order; TF32 off), bf16 1e-2 (bf16 rounding of
inputs, outputs and gradients); where Liger's math is the reference's bit for bit in fp32 the
check is tighter. Inputs are fresh random draws, never zeros.
"""

from __future__ import annotations

import pytest
import torch

from mm_core.kernels import cuda_liger, get_kernel, reference
from mm_core.kernels.registry import clear_kernel_cache

pytestmark = [pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
              pytest.mark.skipif(not cuda_liger.liger_importable(), reason="needs liger-kernel (and Triton)")]

TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2}
DTYPES = [torch.float32, torch.bfloat16]


@pytest.fixture(autouse=True)
def no_tf32(monkeypatch):
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    monkeypatch.delenv(cuda_liger.ENV, raising=False)
    clear_kernel_cache()
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old
    clear_kernel_cache()


def rel(out: torch.Tensor, ref: torch.Tensor) -> float:
    assert not torch.isnan(out).any()
    return ((out.double() - ref.double()).norm() / ref.double().norm()).item()


def grads(fn, *inputs: torch.Tensor, diff: int = 1) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(output, gradients of the first ``diff`` inputs) for a fixed random upstream gradient."""
    leaves = [t.detach().clone().requires_grad_(i < diff) for i, t in enumerate(inputs)]
    out = fn(*leaves)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64).to(out)
    out.backward(g)
    return out.detach(), [t.grad for t in leaves[:diff]]


def check(kernel, ref_op, *inputs: torch.Tensor, dtype: torch.dtype, diff: int = 1) -> None:
    out, g = grads(kernel, *inputs, diff=diff)
    ref, g_ref = grads(ref_op, *(t.double() if t.is_floating_point() else t for t in inputs), diff=diff)
    assert out.dtype == dtype
    assert rel(out, ref) <= TOL[dtype], "forward"
    for a, b in zip(g, g_ref, strict=True):
        assert rel(a, b) <= TOL[dtype], "backward"


@pytest.mark.parametrize("dtype", DTYPES)
def test_rms_norm(dtype):
    x = torch.randn(3, 50, 320, device="cuda", dtype=dtype)
    w = (1 + 0.1 * torch.randn(320, device="cuda")).to(dtype)
    check(lambda a, b: cuda_liger.rms_norm(a, b, 1e-6), lambda a, b: reference.rms_norm(a, b, 1e-6), x, w, dtype=dtype,
          diff=2)
    if dtype == torch.float32:  # Liger's "llama" casting is the reference's math: equal to float rounding
        assert rel(cuda_liger.rms_norm(x, w, 1e-6), reference.rms_norm(x, w, 1e-6)) <= 1e-6


def test_rms_norm_with_fp32_weights_over_bf16_keeps_the_reference():
    x = torch.randn(4, 64, device="cuda", dtype=torch.bfloat16)
    w = torch.rand(64, device="cuda") + 0.5
    out = cuda_liger.rms_norm(x, w, 1e-6)
    assert out.dtype == torch.float32 and torch.equal(out, reference.rms_norm(x, w, 1e-6))


@pytest.mark.parametrize("dtype", DTYPES)
def test_swiglu(dtype):
    gate_up = torch.randn(2, 37, 2 * 352, device="cuda", dtype=dtype)
    check(cuda_liger.swiglu, reference.swiglu, gate_up, dtype=dtype)


def _decoder_qk(dtype):
    """q as the decoder makes it: a transpose of the fused projection's view, [B, H, T, D]."""
    qkv = torch.randn(2, 40, 4, 3, 64, device="cuda", dtype=dtype)
    return qkv[:, :, :, 0].transpose(1, 2)


@pytest.mark.parametrize("dtype", DTYPES)
def test_rotary_multimodal_tables_decoder_layout(dtype):
    pos = torch.randint(0, 300, (3, 2, 40), device="cuda")
    cos, sin = reference.mrope_cos_sin(pos, 64, 1e6, [8, 12, 12])  # Qwen2.5-VL's split at head_dim 64
    q = _decoder_qk(dtype)
    check(lambda x, c, s: cuda_liger.rotary(x, c, s), reference.rotary, q, cos.unsqueeze(1), sin.unsqueeze(1),
          dtype=dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_rotary_partial_and_contiguous_input_is_not_written(dtype):
    x = torch.randn(2, 40, 4, 64, device="cuda", dtype=dtype).transpose(1, 2)  # Liger would rotate in place
    before = x.clone()
    cos, sin = reference.rotary_cos_sin(torch.arange(40, device="cuda")[None], 32, 1e4)  # 32 of 64 channels
    check(cuda_liger.rotary, reference.rotary, x, cos[:, None], sin[:, None], dtype=dtype)
    out = cuda_liger.rotary(x, cos[:, None], sin[:, None])
    assert torch.equal(x, before)
    assert torch.equal(out[..., 32:], x[..., 32:])


@pytest.mark.parametrize("dtype", DTYPES)
def test_rotary_vision_layout(dtype):
    qkv = torch.randn(300, 4, 3, 40, device="cuda", dtype=dtype)  # [N, H, 3, D] like the ViT's fused qkv
    cos, sin = reference.rotary_cos_sin(torch.arange(300, device="cuda"), 40, 1e4)
    check(cuda_liger.rotary, reference.rotary, qkv[:, :, 0], cos[:, None], sin[:, None], dtype=dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("uniform", [True, False])
def test_linear_cross_entropy_matches_the_chunked_loss(dtype, uniform):
    from mm_core.losses.cross_entropy import weighted_ce_sum

    n, h, v = 300, 128, 1000
    hidden = torch.randn(n, h, device="cuda")
    weight = 0.05 * torch.randn(v, h, device="cuda")
    targets = torch.randint(0, v, (n,), device="cuda")
    weights = torch.full((n,), 1 / 7, device="cuda") if uniform else torch.rand(n, device="cuda") + 0.1

    def run(fn):
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            return grads(lambda a, b: fn(a, b).reshape(1), hidden, weight, diff=2)

    ours, g = run(lambda a, b: cuda_liger.linear_cross_entropy(a, b, targets, weights))
    ref, g_ref = run(lambda a, b: weighted_ce_sum(a, b, targets, weights, compute_mode="chunk", chunk_size=64))
    assert ours.dtype == torch.float32
    assert rel(ours, ref) <= (1e-6 if dtype == torch.float32 else 1e-3)
    for a, b in zip(g, g_ref, strict=True):
        assert rel(a, b) <= TOL[dtype]


def test_registry_picks_liger_unless_turned_off(monkeypatch):
    assert get_kernel("rms_norm", "cuda") is cuda_liger.rms_norm
    assert get_kernel("rotary", "cuda") is cuda_liger.rotary
    monkeypatch.setenv(cuda_liger.ENV, "rms_norm,swiglu")
    clear_kernel_cache()
    assert get_kernel("swiglu", "cuda") is cuda_liger.swiglu
    assert get_kernel("rotary", "cuda") is reference.rotary
    monkeypatch.setenv(cuda_liger.ENV, "0")
    clear_kernel_cache()
    assert get_kernel("rms_norm", "cuda") is reference.rms_norm


def test_qwen_model_with_liger_kernels_matches_the_reference(tmp_path, monkeypatch):
    """The whole tiny Qwen2.5-VL (vision rotary, multimodal rotary, norms, MLPs) in fp32: logits and
    every gradient as with the reference kernels."""
    from mm_core.nn.pretrained import load_pretrained
    from mm_qwen.tiny import make_inputs, save_tiny_model, tiny_config_dict

    hf_dir = save_tiny_model(tmp_path / "hf", seed=0)
    case = [[("text", 3), ("image", (1, 8, 8)), ("text", 2), ("video", (2, 4, 8), 0.5), ("text", 4)],
            [("text", 5), ("image", (1, 10, 6)), ("text", 1)]]
    batch = {k: v.cuda() if isinstance(v, torch.Tensor) else v
             for k, v in make_inputs(tiny_config_dict(), case, seed=2).items()}
    results = []
    for setting in ("1", "0"):
        monkeypatch.setenv(cuda_liger.ENV, setting)
        clear_kernel_cache()
        model = load_pretrained(hf_dir, device="cuda")
        logits = model(**batch)
        logits.float().pow(2).mean().backward()
        results.append((logits.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}))
    (out, g), (ref, g_ref) = results
    assert rel(out, ref) <= 1e-5
    assert g.keys() == g_ref.keys()
    for name in g:
        assert rel(g[name], g_ref[name]) <= 1e-4, name

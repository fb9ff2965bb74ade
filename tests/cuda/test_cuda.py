"""The same checks on a CUDA device (skipped where none is visible, e.g. in CI).

Run on a GPU machine with ``pytest tests/cuda``: the model against transformers on the GPU, one
process of the engine on cuda/nccl against the same run on cpu/gloo, FSDP2 or not at dp=1, and
bf16 training. TF32 is switched off so fp32 comparisons are exact to float rounding.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

_spec = importlib.util.spec_from_file_location("engine_helpers",
                                               Path(__file__).parents[1] / "core" / "engine" / "_helpers.py")
helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(helpers)


@pytest.fixture(autouse=True)
def no_tf32():
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def test_qwen_logits_match_transformers_on_cuda(tmp_path):
    from transformers import Qwen2_5_VLForConditionalGeneration

    from mm_core.nn.pretrained import load_pretrained as load_model
    from mm_qwen.tiny import make_inputs, save_tiny_model, tiny_config_dict

    hf_dir = save_tiny_model(tmp_path / "hf", seed=0)
    hf = Qwen2_5_VLForConditionalGeneration.from_pretrained(hf_dir, dtype=torch.float32).cuda().eval()
    ours = load_model(hf_dir, device="cuda").eval()
    case = [[("text", 3), ("image", (1, 8, 8)), ("text", 2), ("video", (2, 4, 8), 0.5), ("text", 4)],
            [("text", 5), ("image", (1, 10, 6)), ("text", 1)]]
    batch = {k: v.cuda() if isinstance(v, torch.Tensor) else v
             for k, v in make_inputs(tiny_config_dict(), case, seed=2).items()}
    with torch.no_grad():
        ref = hf(**batch).logits
        out = ours(**batch)
    valid = batch["attention_mask"].bool()
    assert (out - ref)[valid].abs().max().item() <= 1e-4


def _cuda(cfg: dict, **parallel) -> dict:
    cfg["parallel"].update(device="cuda", **parallel)
    return cfg


def test_engine_on_cuda_trains_like_cpu(tmp_path):
    cpu, w_cpu = helpers.run_inprocess(tmp_path, "cpu", helpers.base_config("qwen"))
    gpu, w_gpu = helpers.run_inprocess(tmp_path, "cuda", _cuda(helpers.base_config("qwen")))
    assert [r["loss"] for r in gpu] == pytest.approx([r["loss"] for r in cpu], rel=1e-4)
    assert all(r["peak_memory_gb"] > 0 for r in gpu)
    for k, v in w_cpu.items():
        torch.testing.assert_close(w_gpu[k].cpu(), v, rtol=1e-3, atol=1e-4, msg=k)


def test_one_gpu_without_fsdp_trains_like_fsdp_in_bf16(tmp_path):
    bf16 = {"training.dtype": "bf16"}
    fp32, _ = helpers.run_inprocess(tmp_path, "fp32", _cuda(helpers.base_config("qwen")))
    auto, _ = helpers.run_inprocess(tmp_path, "auto", _cuda(helpers.base_config("qwen", **bf16)))
    wrapped, _ = helpers.run_inprocess(tmp_path, "always", _cuda(helpers.base_config("qwen", **bf16), fsdp="always"))
    got, ref, full = ([r["loss"] for r in rs] for rs in (auto, wrapped, fp32))
    assert got == pytest.approx(ref, rel=2e-2)
    assert got != pytest.approx(full, rel=1e-5), "bf16 training gave exactly the fp32 losses: autocast is off"


def test_chunked_cross_entropy_runs_its_matmuls_in_bf16_under_autocast():
    from mm_core.losses.cross_entropy import weighted_ce_sum

    g = torch.Generator(device="cuda").manual_seed(0)
    n, h, v = 512, 64, 4099
    hidden = torch.randn(n, h, device="cuda", generator=g, requires_grad=True)
    head = (torch.randn(v, h, device="cuda", generator=g) * 0.3).requires_grad_()
    targets = torch.randint(0, v, (n,), device="cuda", generator=g)
    weights = torch.ones(n, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        chunked = weighted_ce_sum(hidden, head, targets, weights, compute_mode="chunk", chunk_size=100)
        full = weighted_ce_sum(hidden, head, targets, weights, compute_mode="default")
    torch.testing.assert_close(chunked, full, rtol=1e-3, atol=0)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            weighted_ce_sum(hidden, head, targets, weights, compute_mode="chunk", chunk_size=100).backward()
        torch.cuda.synchronize()
    gemms = [e.key for e in prof.key_averages() if "gemm" in e.key.lower() or "nvjet" in e.key.lower()]
    assert gemms and not any("f32f32_f32f32" in k or "sgemm" in k for k in gemms), gemms


@pytest.mark.parametrize("causal,kv_heads", [(True, 2), (False, 4)])
def test_flash_varlen_attention_equals_the_masked_reference(causal, kv_heads):
    from mm_core.kernels import get_kernel, reference
    from mm_core.kernels.cuda import varlen_available

    if not varlen_available():
        pytest.skip("this torch has no torch.nn.attention.varlen")
    assert get_kernel("attention", "cuda").__module__ == "mm_core.kernels.cuda"
    g = torch.Generator(device="cuda").manual_seed(0)
    b, h, t, d = 2, 4, 96, 64
    seg = torch.full((b, t), -1, device="cuda")
    seg[0, :40], seg[0, 40:90] = 0, 1
    seg[1, :17], seg[1, 17:60], seg[1, 60:96] = 0, 1, 2
    q, k, v = (torch.randn(b, n, t, d, device="cuda", generator=g, dtype=torch.bfloat16).requires_grad_()
               for n in (h, kv_heads, kv_heads))
    out = get_kernel("attention", "cuda")(q, k, v, causal=causal, segment_ids=seg, scale=0.1)
    ref_in = [x.detach().clone().requires_grad_() for x in (q, k, v)]
    ref = reference.attention(*ref_in, causal=causal, segment_ids=seg, scale=0.1)
    real = (seg >= 0)[:, None, :, None]
    torch.testing.assert_close(out * real, ref * real, rtol=2e-2, atol=2e-2)
    grad = torch.randn(out.shape, device="cuda", generator=g, dtype=out.dtype) * real
    out.backward(grad)
    ref.backward(grad)
    for ours, theirs in zip((q, k, v), ref_in):
        torch.testing.assert_close(ours.grad, theirs.grad, rtol=5e-2, atol=5e-2)

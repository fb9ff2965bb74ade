"""bench/profile_summary.py: the time split of profiled steps. A hand-written CUDA-shaped trace whose
split is known by arithmetic, and a real CPU profile of a tiny model whose shares must add up."""

import json
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile, record_function

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import profile_summary as ps  # noqa: E402


def _x(name, cat, ts, dur, tid=1, **args):
    return {"ph": "X", "name": name, "cat": cat, "ts": ts, "dur": dur, "tid": tid, "pid": 0, "args": args}


def _cuda_trace():
    """One 100 us step: vision GEMM forward (10 us) and its backward on autograd's thread (20 us),
    decoder attention (15 us), a loss reduction (5 us), the optimizer (10 us); GPU idle 40 us."""
    return {"traceEvents": [
        _x("step", "user_annotation", 0, 100),
        _x("vision", "user_annotation", 1, 10),
        _x("aten::linear", "cpu_op", 2, 5, **{"External id": 1, "Sequence number": 7}),
        _x("aten::addmm", "cpu_op", 3, 3, **{"External id": 2, "Sequence number": 7}),
        _x("sm90_xmma_gemm_bf16", "kernel", 10, 10, tid=7, **{"External id": 2}),
        _x("decoder", "user_annotation", 12, 6),
        _x("aten::_flash_attention_forward", "cpu_op", 13, 2, **{"External id": 3, "Sequence number": 8}),
        _x("flash_fwd_kernel", "kernel", 20, 15, tid=7, **{"External id": 3}),
        _x("loss", "user_annotation", 19, 3),
        _x("aten::sum", "cpu_op", 20, 1, **{"External id": 4, "Sequence number": 9}),
        _x("reduce_kernel", "kernel", 35, 5, tid=7, **{"External id": 4}),
        # backward, on another thread: the vision linear's gradient GEMM
        _x(f"{ps.BACKWARD_PREFIX}: AddmmBackward0", "cpu_op", 40, 5, tid=2,
           **{"External id": 5, "Sequence number": 7}),
        _x("aten::mm", "cpu_op", 41, 2, tid=2, **{"External id": 6}),
        _x("nvjet_tst_128x256", "kernel", 50, 20, tid=7, **{"External id": 6}),
        _x("optimizer", "user_annotation", 70, 20),
        _x("aten::_fused_adamw_", "cpu_op", 71, 2, **{"External id": 7}),
        _x("multi_tensor_apply_kernel", "kernel", 80, 10, tid=7, **{"External id": 7}),
        _x("elementwise_kernel", "kernel", 150, 10, tid=7),  # after the step: not counted
    ]}


def test_cuda_shaped_trace_split_by_arithmetic():
    s = ps.summarize_trace(_cuda_trace())
    assert s["device"] == "cuda" and s["steps"] == 1
    assert s["step_ms"] == pytest.approx(0.100)
    cats = {k: round(v * 1e3, 6) for k, v in s["categories_ms"].items()}  # microseconds
    assert cats == {"gemm": 30.0, "attention": 15.0, "elementwise": 5.0, "communication": 0.0, "optimizer": 10.0,
                    "other": 0.0}
    regions = {k: round(v * 1e3, 6) for k, v in s["regions_ms"].items()}
    assert regions == {"vision": 30.0, "decoder": 15.0, "loss": 5.0, "optimizer": 10.0, "other": 0.0}
    assert s["host_gap_ms"] * 1e3 == pytest.approx(40.0)  # 100 us minus 60 us of kernels
    assert s["share"]["host_gap"] == pytest.approx(0.4)
    assert s["top"][0]["name"] == "nvjet_tst_128x256" and s["top"][0]["category"] == "gemm"


def test_trace_without_step_range_is_refused():
    trace = {"traceEvents": [e for e in _cuda_trace()["traceEvents"] if e["name"] != "step"]}
    with pytest.raises(ValueError, match="record_function\\('step'\\)"):
        ps.summarize_trace(trace)


def test_cpu_profile_of_a_tiny_model(tmp_path):
    torch.manual_seed(0)
    vision, decoder, head = torch.nn.Linear(64, 64), torch.nn.Linear(64, 192), torch.nn.Linear(64, 100)
    params = [*vision.parameters(), *decoder.parameters(), *head.parameters()]
    opt = torch.optim.AdamW(params, lr=1e-3)
    x, y = torch.randn(2, 32, 64), torch.randint(0, 100, (2 * 32,))
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(2):
            with record_function("step"):
                with record_function("vision"):
                    h = torch.relu(vision(x))
                with record_function("decoder"):
                    q, k, v = decoder(h).view(2, 32, 3, 4, 16).permute(2, 0, 3, 1, 4)
                    h = h + F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(2, 32, 64)
                with record_function("loss"):
                    loss = F.cross_entropy(head(h).reshape(-1, 100), y)
                loss.backward()
                with record_function("optimizer"):
                    opt.step()
                    opt.zero_grad()
    s = ps.summarize_profiler(prof, tmp_path / "trace.json")
    assert s["device"] == "cpu" and s["steps"] == 2
    assert all(s["regions_ms"][r] > 0 for r in ps.REGIONS)
    assert s["categories_ms"]["gemm"] > 0 and s["categories_ms"]["attention"] > 0
    # operators' self times tile the time they run: with the gaps between them they fill the step
    assert sum(s["share"].values()) == pytest.approx(1.0, abs=1e-6)
    assert sum(s["region_share"].values()) + s["share"]["host_gap"] == pytest.approx(1.0, abs=1e-6)
    # the vision linear's backward (outside every range) is counted as vision: more than its forward alone
    forward_only = ps.summarize_trace({"traceEvents": [
        e for e in json.loads((tmp_path / "trace.json").read_text())["traceEvents"]
        if not str(e.get("name", "")).startswith(ps.BACKWARD_PREFIX)]})
    assert s["regions_ms"]["vision"] > forward_only["regions_ms"]["vision"]
    assert "ms/step" in ps.one_line(s)

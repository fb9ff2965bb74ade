"""bench/gpu_train.py on CPU (issue 16's script must be testable without a GPU): one tiny step of the
engine and the transformers loop with a profile, the FLOP count against a hand count, and the
op-by-op Liger patch's wiring with plain-PyTorch ops standing in for Liger's (same loss)."""

import sys
from pathlib import Path

import pytest
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import gpu_train  # noqa: E402
import liger_baseline  # noqa: E402
import profile_summary  # noqa: E402


def test_one_cpu_step_writes_the_fields(tmp_path, capsys):
    import json

    out = tmp_path / "gpu_train.json"
    assert gpu_train.main(["--quick", "--device", "cpu", "--steps", "1", "--warmup", "0", "--repeats", "1",
                           "--sides", "engine,transformers,liger", "--profile", "--profile-steps", "1",
                           "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    assert "liger" in r["skipped"]  # no CUDA here: the Liger loop is named as skipped, not silently missing
    eng, ref = r["engine_auto"], r["transformers"]
    assert eng["params"] == ref["params"] > 0  # one model, counted the same on both sides
    for side in (eng, ref):
        assert "error" not in side and side["tokens_per_s"] > 0
        assert side["tokens_per_s"] == pytest.approx(2 * r["workload"]["seq"] / side["step_s"])
        assert side["mfu"] is None and side["mfu_attn"] is None  # no peak FLOP/s known for a CPU
    assert eng["kernels"] == {"rms_norm": "reference", "rotary": "reference", "swiglu": "reference"}
    assert r["speedup_vs_transformers"] == pytest.approx(eng["tokens_per_s"] / ref["tokens_per_s"])
    prof = eng["profile"]
    assert prof["steps"] == 1 and set(prof["share"]) == {*profile_summary.CATEGORIES, "host_gap"}
    assert sum(prof["share"].values()) == pytest.approx(1.0, abs=1e-6)
    assert all(prof["regions_ms"][k] > 0 for k in ("vision", "decoder", "loss", "optimizer"))
    assert "engine" in capsys.readouterr().out


def test_attention_flops_by_hand():
    hf, work = gpu_train.model_config("qwen2_5_vl_3b", True, False, "cpu")
    # LLM: 2 layers, 4 heads x 16, causal over 128 tokens; fwd + bwd = 3 x (2 products x 2 FLOPs)
    llm = 3 * 4 * (128 * 128 / 2) * 64 * 2
    # ViT: 112 px = 4x4 merged units of 2x2 patches; 56 px windows = 2x2 units: 4 windows of 16 patches;
    # 1 full-attention block (one 64-patch window) and 1 windowed block, 32 wide
    vit = 3 * 4 * 32 * (64 ** 2 + 4 * 16 ** 2)
    assert gpu_train.attention_flops(hf, work) == llm + vit
    dense, with_attn = gpu_train.step_flops(hf, work, 1000)
    assert dense == 6 * 1000 * 2 * 128 and with_attn == dense + 2 * (llm + vit)


def test_op_by_op_patch_keeps_the_loss():
    from transformers.models.qwen2_5_vl import modeling_qwen2_5_vl as modeling

    from mm_core.kernels import reference
    from mm_qwen.tiny import build_hf_model, make_inputs, tiny_config_dict

    cfg = tiny_config_dict(vision_depth=1, text_layers=2)
    model = build_hf_model(cfg, seed=0, std=0.2).train()
    batch = make_inputs(cfg, [[("text", 4), ("image", (1, 4, 4)), ("text", 6)]], seed=1)
    labels = batch["input_ids"].clone()
    labels[:, :3] = -100
    batch = {**batch, "labels": labels}
    ref = model(**batch).loss
    before = {k: getattr(modeling, k) for k in ("apply_rotary_pos_emb", "apply_multimodal_rotary_pos_emb")
              if hasattr(modeling, k)}
    calls = {"norm": 0, "mlp": 0, "rope": 0, "ce": 0}

    def count(name, fn):
        def wrapped(*a, **k):
            calls[name] += 1
            return fn(*a, **k)
        return wrapped

    rope = next(iter(before.values()))
    with liger_baseline.restored(*liger_baseline.liger_modules()):
        loss_fn = liger_baseline.patch_ops(
            model, modeling, rms_norm=count("norm", reference.rms_norm),
            silu_mul=count("mlp", lambda a, b: F.silu(a) * b), rope=count("rope", rope), mrope=count("rope", rope),
            linear_ce=count("ce", lambda w, h, y: F.cross_entropy(h @ w.t(), y, ignore_index=-100)))
        ours = loss_fn(model, batch)
    assert ours.item() == pytest.approx(ref.item(), rel=1e-6)
    assert calls["norm"] > 0 and calls["mlp"] > 0 and calls["rope"] == 2 and calls["ce"] == 1
    assert {k: getattr(modeling, k) for k in before} == before  # the module-wide patch is undone
    ours.backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if "lm_head" in n or "layers.0" in n)


def test_bad_sides_are_refused(capsys):
    with pytest.raises(SystemExit):
        gpu_train.parse_args(["--sides", "engine,megatron"])
    assert "--sides: unknown ['megatron']" in capsys.readouterr().err

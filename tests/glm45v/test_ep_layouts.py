"""Expert parallel beyond ep = dp: in ONE 4-process launch (gloo) the engine trains GLM-4.5V tiny
for two steps under ep 2 x dp 4 (two replicas of each expert shard), ep 2 with tp 2 and ep 4 over
dp 2 x cp 2 (one rank's expert gets no token), then resumes ep 2 x dp 4's step-1 checkpoint (weights
and optimizer state, resharded) for step 2 under pp 2 x ep 2, each stage sharding its own MoE layer.
Each gives one process's losses, gradient norms, tokens per expert and final weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

LAYOUTS: dict[str, dict[str, Any]] = {
    "dp4_ep2": {"ep": 2},  # saves step 1 with its optimizer state for the resumed run
    "tp2_ep2": {"tp": 2, "ep": 2},
    "cp2_ep4": {"cp": 2, "ep": 4},  # ep over dp x cp: cp ranks hold other tokens of the same samples
}
RESUMED, PP = "pp2_ep2_from_dp4_ep2", {"pp": 2, "ep": 2, "layers": ([1, 0], [2, 1])}  # an MoE layer per stage


def _config(tmp_path: Path, hf: Path, name: str, **parallel: Any) -> str:
    from mm_core.plugins import get_plugin_manager
    from mm_core.testing.parallel_checks import finetune_config

    cfg = finetune_config(get_plugin_manager().model("glm4v_moe"), hf, tmp_path / name / "ckpt", **parallel)
    cfg["training"].update(global_batch_size=4, router_aux_loss_coef=0.05)
    if name == "dp4_ep2":
        cfg["output"].update(save_interval=1, save_weights_only=False)
    if name == RESUMED:
        cfg["output"].update(load=str(tmp_path / "dp4_ep2" / "ckpt"), load_iteration=1)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return str(path)


def _job(tmp_path: Path, name: str, runs: dict[str, str]) -> Path:
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps({"batches": str(tmp_path / "batches.pt"), "runs": runs, "out": str(tmp_path)}))
    return path


def test_ep_layouts_train_like_one_process(tmp_path: Path) -> None:
    from mm_core.testing.hf_files import read_dcp_model
    from mm_core.testing.train_worker import run_all
    from mm_glm.tiny import make_inputs
    from mm_glm.tiny_moe import save_tiny_model

    torch.set_num_threads(1)
    with torch.random.fork_rng(devices=[]):
        hf = save_tiny_model(tmp_path / "hf", vision_depth=1, text_layers=3)
    config = json.loads((hf / "config.json").read_text())
    rows = [[("text", 4), ("image", (4, 4)), ("text", 5)], [("text", 3), ("video", (2, 4, 4), 2), ("text", 2)],
            [("text", 6), ("image", (4, 4)), ("text", 3)], [("image", (4, 4)), ("text", 7)]]
    # (all with media: a text-only micro-batch needs the data pipeline's dummy image under dp)
    torch.save([make_inputs(config, [r], seed=50 + i) for i, r in enumerate(rows)], tmp_path / "batches.pt")

    run_all(_job(tmp_path, "one", {"one": _config(tmp_path, hf, "one")}))
    runs = {name: _config(tmp_path, hf, name, **par) for name, par in LAYOUTS.items()}
    runs[RESUMED] = _config(tmp_path, hf, RESUMED, **PP)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "4",
           "-m", "mm_core.testing.train_worker", str(_job(tmp_path, "ep", runs))]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, f"the 4-process launch failed:\n{proc.stderr[-4000:]}"

    want = json.loads((tmp_path / "one" / "records.json").read_text())
    assert 0 in want[0]["tokens_per_expert"]["1"]  # an expert without tokens: its rank must still run the exchanges
    final = read_dcp_model(tmp_path / "one" / "ckpt" / "iter_0000002")
    assert "text_decoder.decoder.layers.1.mlp.experts.weight1" in final
    for name in runs:
        got = json.loads((tmp_path / name / "records.json").read_text())
        ref = want[1:] if name == RESUMED else want  # the resumed run trains step 2 only
        for key in ("loss", "grad_norm"):
            assert [r[key] for r in got] == pytest.approx([r[key] for r in ref], rel=1e-5), f"{name}: {key}"
        assert [r["tokens_per_expert"] for r in got] == [r["tokens_per_expert"] for r in ref], name
        weights = read_dcp_model(tmp_path / name / "ckpt" / "iter_0000002")
        assert weights.keys() == final.keys(), name
        for k, v in final.items():
            torch.testing.assert_close(weights[k], v, rtol=1e-5, atol=1e-6, msg=lambda m, k=k, n=name: f"{n} {k}: {m}")

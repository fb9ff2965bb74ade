"""Expert parallel (ep 2, gloo, dropless all-to-all dispatch and combine) gives one GLM-4.5V MoE
layer the outputs and gradients of the whole layer: inputs, router and shared expert per rank,
each expert's weights summed over both ranks' tokens (including a rank that sends an expert nothing)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def test_ep2_layer_equals_the_whole_layer(tmp_path: Path) -> None:
    worker = Path(__file__).with_name("_ep_worker.py")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(worker),
           str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, f"the 2-process launch failed:\n{proc.stderr[-4000:]}"
    for rank in range(2):
        bad = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert not bad, f"ep rank {rank}: " + "; ".join(bad)


def test_engine_ep2_trains_like_one_process(tmp_path: Path) -> None:
    """``parallel.ep 2`` (experts sharded over the 2 data-parallel ranks, FSDP2 on the rest): two
    steps give one process's losses, gradient norms, tokens per expert and saved weights."""
    import pytest
    import torch
    import yaml

    from mm_core.plugins import get_plugin_manager
    from mm_core.testing.hf_files import read_dcp_model
    from mm_core.testing.parallel_checks import finetune_config
    from mm_core.testing.train_worker import run_all
    from mm_glm.tiny import make_inputs
    from mm_glm.tiny_moe import save_tiny_model

    torch.set_num_threads(1)
    with torch.random.fork_rng(devices=[]):
        hf = save_tiny_model(tmp_path / "hf", vision_depth=1, text_layers=3)
    config = json.loads((hf / "config.json").read_text())
    samples = [make_inputs(config, [[("text", 4), ("image", (4, 4)), ("text", 5)]], seed=40),
               make_inputs(config, [[("text", 3), ("video", (2, 4, 4), 2), ("text", 2)]], seed=41)]
    # (both with media: a text-only micro-batch needs the data pipeline's dummy image under dp)
    torch.save(samples, tmp_path / "batches.pt")
    spec = get_plugin_manager().model("glm4v_moe")

    def job(name: str, **parallel) -> Path:
        cfg = finetune_config(spec, hf, tmp_path / name / "ckpt", **parallel)
        cfg["training"].update(router_aux_loss_coef=0.05)
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps({"batches": str(tmp_path / "batches.pt"), "runs": {name: str(tmp_path / f"{name}.yaml")},
                                    "out": str(tmp_path)}))
        return path

    run_all(job("one"))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "mm_core.testing.train_worker", str(job("ep2", ep=2))]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, f"the 2-process launch failed:\n{proc.stderr[-4000:]}"
    want = json.loads((tmp_path / "one" / "records.json").read_text())
    got = json.loads((tmp_path / "ep2" / "records.json").read_text())
    for key in ("loss", "grad_norm"):
        assert [r[key] for r in got] == pytest.approx([r[key] for r in want], rel=1e-5), key
    assert [r["tokens_per_expert"] for r in got] == [r["tokens_per_expert"] for r in want]
    a, b = (read_dcp_model(tmp_path / n / "ckpt" / "iter_0000002") for n in ("one", "ep2"))
    assert "text_decoder.decoder.layers.1.mlp.experts.weight1" in b
    for k, v in a.items():
        torch.testing.assert_close(b[k], v, rtol=1e-5, atol=1e-6, msg=lambda m, k=k: f"{k}: {m}")


def test_ep_layouts_that_do_not_fit_are_refused_by_field() -> None:
    import pytest

    from mm_core.engine.expert_parallel import check_expert_parallel
    from mm_core.errors import ConfigError

    check_expert_parallel(1, 4, 2, 1)
    check_expert_parallel(4, 4, 1, 1)
    for ep, dp, tp, cp in ((2, 4, 1, 1), (2, 2, 2, 1), (2, 2, 1, 2)):
        with pytest.raises(ConfigError, match="parallel.ep"):
            check_expert_parallel(ep, dp, tp, cp)

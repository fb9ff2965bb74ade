"""The router balance loss under context parallel: cp 2 trains GLM-4.5V like one process.

transformers computes the balance loss over all tokens of the batch; under cp each rank holds two
chunks of every row, so the per-expert statistics are summed over the cp group (the mean router
probabilities differentiably). Reference: one process, 4 one-row micro-batches (gradient
accumulation 4), ``router_aux_loss_coef`` > 0, 2 steps. ONE 4-process launch (gloo) runs cp 2 x
dp 2 with ``token_loss`` and cp 2 x pp 2 (MoE layers on both stages, so the statistics cross a
stage and then the cp group) with ``per_sample_loss``: losses, gradient norms, tokens per expert
and the saved weights must be one process's. Rows of 13 tokens are padded to 16 by the trainer
(a multiple of 2 x cp), so the padding mask is split over cp ranks too. Without the cp sum the
loss differs (each rank's chunks route differently), and so does the gradient without the
share-only backward.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from mm_core.testing.hf_files import read_dcp_model
from mm_core.testing.parallel_checks import finetune_config

COEF = 0.05
STEPS = 2
ROWS = ([("text", 3), ("image", (4, 4)), ("text", 4)], [("text", 13)],
        [("text", 2), ("image", (4, 4)), ("text", 5)], [("text", 13)])  # 13 ids each: padded to 16 under cp 2
# (each dp rank's micro-batch i has media when the other's has: a text-only one would skip the vision
# tower's collectives; the data pipeline adds a dummy image for that, these fixed batches do not)
RUNS = {"cp2_dp2_token_loss": ("token_loss", {"cp": 2}),
        "cp2_pp2_per_sample_loss": ("per_sample_loss", {"cp": 2, "pp": 2, "layers": ([1, 0], [2, 1])})}


def _config(spec: Any, hf: Path, save: Path, loss: str, **parallel: Any) -> dict:
    cfg = finetune_config(spec, hf, save, **parallel)
    cfg["training"].update(global_batch_size=4, train_iters=STEPS, loss_type=loss, router_aux_loss_coef=COEF)
    return cfg


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import yaml

    from mm_core.plugins import get_plugin_manager
    from mm_core.testing.train_worker import run_all
    from mm_glm.tiny import make_inputs
    from mm_glm.tiny_moe import save_tiny_model

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("aux_cp")
    with torch.random.fork_rng(devices=[]):
        hf = save_tiny_model(root / "hf", vision_depth=1, text_layers=3, aux_coef=COEF)
    config = json.loads((hf / "config.json").read_text())
    samples = [make_inputs(config, [row], seed=50 + i) for i, row in enumerate(ROWS)]
    assert {s["input_ids"].shape[1] for s in samples} == {13}
    assert len({int((s["labels"] != -100).sum()) for s in samples}) == 1  # rank-mean loss types: layout invariant
    torch.save(samples, root / "batches.pt")
    spec = get_plugin_manager().model("glm4v_moe")

    def job(name: str, runs: dict[str, tuple[str, dict[str, Any]]]) -> Path:
        files = {}
        for run, (loss, parallel) in runs.items():
            files[run] = str(root / f"{run}.yaml")
            Path(files[run]).write_text(yaml.safe_dump(_config(spec, hf, root / run / "ckpt", loss, **dict(parallel)),
                                                       sort_keys=False))
        path = root / f"{name}.json"
        path.write_text(json.dumps({"batches": str(root / "batches.pt"), "runs": files, "out": str(root)}))
        return path

    run_all(job("reference", {f"one_{loss}": (loss, {}) for loss, _ in RUNS.values()}))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "4",
           "-m", "mm_core.testing.train_worker", str(job("cp", RUNS))]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, f"the 4-process launch failed:\n{proc.stderr[-4000:]}"
    return root


@pytest.mark.distributed
@pytest.mark.parametrize("name", sorted(RUNS))
def test_cp2_with_router_aux_loss_equals_one_process(root: Path, name: str) -> None:
    loss = RUNS[name][0]
    want = json.loads((root / f"one_{loss}" / "records.json").read_text())
    got = json.loads((root / name / "records.json").read_text())
    assert len(got) == STEPS
    assert [r["loss"] for r in got] == pytest.approx([r["loss"] for r in want], rel=1e-5)
    assert [r["grad_norm"] for r in got] == pytest.approx([r["grad_norm"] for r in want], rel=1e-5)
    # padding is not counted, also when each cp rank routes its chunks of a padded row
    assert [r["tokens_per_expert"] for r in got] == [r["tokens_per_expert"] for r in want]
    a = read_dcp_model(root / f"one_{loss}" / "ckpt" / f"iter_{STEPS:07d}")
    b = read_dcp_model(root / name / "ckpt" / f"iter_{STEPS:07d}")
    assert set(a) == set(b)
    for k, v in a.items():
        torch.testing.assert_close(b[k], v, rtol=1e-5, atol=1e-6, msg=lambda m, k=k: f"{name} {k}: {m}")

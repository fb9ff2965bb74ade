"""The router balance loss is part of the final loss with every loss type, full or chunked
logits, under gradient accumulation, data parallel and pipeline parallel.

Reference: one process, 4 micro-batches of one row (gradient accumulation 4). Its first logged
loss must be the mean over the 4 samples of transformers' loss with ``output_router_logits``
(cross-entropy + coef x aux loss). Every other run (dp 2 with accumulation 2; pp 2 with the MoE
layers on both stages, so the statistics cross a stage; the chunked loss) must give the same
loss, gradient norm and updated weights as the one-process run of its loss type. All 4 samples
have the same number of labelled tokens, so the rank-mean loss types are layout invariant too.
The parallel runs share one 2-process launch.
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
LOSSES = ("default", "per_sample_loss", "per_token_loss", "token_loss", "square_loss")
CHUNKED = {"pp2_chunk_token_loss": "token_loss", "pp2_chunk_square_loss": "square_loss",
           "dp2_chunk_per_token_loss": "per_token_loss"}
ROWS = ([("text", 4), ("image", (4, 4)), ("text", 5)], [("text", 15)], [("text", 2), ("image", (4, 4)), ("text", 7)],
        [("text", 15)])  # 15 + 1 ids each; the first label is -100: 15 labelled tokens per sample


def _config(spec: Any, hf: Path, save: Path, loss: str, compute: str = "default", **parallel: Any) -> dict:
    cfg = finetune_config(spec, hf, save, **parallel)
    cfg["training"].update(global_batch_size=4, train_iters=1, loss_type=loss, compute_mode=compute, chunk_size=5)
    if loss != "default":  # the default loss's run leaves the coefficient unset: the model config's COEF
        cfg["training"]["router_aux_loss_coef"] = COEF
    return cfg


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    import yaml

    from mm_core.plugins import get_plugin_manager
    from mm_core.testing.train_worker import run_all
    from mm_glm.tiny import make_inputs
    from mm_glm.tiny_moe import save_tiny_model

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("aux")
    with torch.random.fork_rng(devices=[]):
        hf = save_tiny_model(root / "hf", vision_depth=2, text_layers=3, aux_coef=COEF)
    config = json.loads((hf / "config.json").read_text())
    samples = [make_inputs(config, [row], seed=30 + i) for i, row in enumerate(ROWS)]
    assert len({int((s["labels"] != -100).sum()) for s in samples}) == 1
    torch.save(samples, root / "batches.pt")
    spec = get_plugin_manager().model("glm4v_moe")
    layers = ([2, 0], [2, 1])  # stage 0: the ViT, dense layer 0 and MoE layer 1; stage 1: MoE layer 2

    def job(name: str, cfgs: dict[str, dict]) -> Path:
        files = {}
        for run, cfg in cfgs.items():
            files[run] = str(root / f"{run}.yaml")
            Path(files[run]).write_text(yaml.safe_dump(cfg, sort_keys=False))
        path = root / f"{name}.json"
        path.write_text(json.dumps({"batches": str(root / "batches.pt"), "runs": files, "out": str(root)}))
        return path

    run_all(job("reference", {f"one_{loss}": _config(spec, hf, root / f"one_{loss}" / "ckpt", loss) for loss in LOSSES}))
    parallel = {}
    for loss in LOSSES:
        parallel[f"dp2_{loss}"] = _config(spec, hf, root / f"dp2_{loss}" / "ckpt", loss)
        parallel[f"pp2_{loss}"] = _config(spec, hf, root / f"pp2_{loss}" / "ckpt", loss, pp=2, layers=layers)
    for name, loss in CHUNKED.items():
        extra = {"pp": 2, "layers": layers} if name.startswith("pp2") else {}
        parallel[name] = _config(spec, hf, root / name / "ckpt", loss, compute="chunk", **extra)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "mm_core.testing.train_worker", str(job("parallel", parallel))]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, f"the 2-process launch failed:\n{proc.stderr[-4000:]}"
    return {"root": root, "hf": hf, "samples": samples}


def _same(root: Path, name: str, ref: str) -> None:
    want = json.loads((root / ref / "records.json").read_text())
    got = json.loads((root / name / "records.json").read_text())
    assert [r["loss"] for r in got] == pytest.approx([r["loss"] for r in want], rel=1e-5)
    assert [r["grad_norm"] for r in got] == pytest.approx([r["grad_norm"] for r in want], rel=1e-5)
    # tokens per expert: pp stages log their layers, dp ranks their tokens; padding is not counted
    assert [r["tokens_per_expert"] for r in got] == [r["tokens_per_expert"] for r in want]
    a = read_dcp_model(root / ref / "ckpt" / "iter_0000001")
    b = read_dcp_model(root / name / "ckpt" / "iter_0000001")
    for k, v in a.items():
        torch.testing.assert_close(b[k], v, rtol=1e-5, atol=1e-6, msg=lambda m, k=k: f"{name} {k}: {m}")


def test_one_process_final_loss_is_transformers_loss_with_router_aux(runs: dict[str, Any]) -> None:
    import transformers

    hf = transformers.Glm4vMoeForConditionalGeneration.from_pretrained(runs["hf"], dtype=torch.float32).eval()
    losses, auxes = [], []
    with torch.no_grad():
        for s in runs["samples"]:
            out = hf(**s, output_router_logits=True)
            losses.append(float(out.loss))
            auxes.append(float(out.aux_loss))
    assert min(auxes) > 0 and COEF * min(auxes) > 1e-3  # the aux term is large enough to show
    record = json.loads((runs["root"] / "one_default" / "records.json").read_text())[0]
    assert record["loss"] == pytest.approx(sum(losses) / len(losses), rel=1e-5)
    tokens = sum(int(s["attention_mask"].sum()) for s in runs["samples"])
    assert sorted(record["tokens_per_expert"]) == ["1", "2"]  # layer 0 is dense
    assert all(sum(c) == 2 * tokens for c in record["tokens_per_expert"].values())  # top-2


def test_the_coefficient_defaults_to_the_model_configs() -> None:
    """Unset: the model's own value (the one-process ``default`` run above trains with it and matches
    transformers); a number overrides it; 0 turns it off; dense models (no field) get 0."""
    from mm_core.engine.aux_loss import resolve_aux_loss_coef
    from mm_core.errors import ConfigError
    from mm_glm.tiny_moe import tiny_moe_config_dict

    moe = tiny_moe_config_dict(aux_coef=1e-4)
    assert moe["text_config"]["router_aux_loss_coef"] == 1e-4 and "router_aux_loss_coef" not in moe
    coef, note = resolve_aux_loss_coef(None, moe)
    assert coef == 1e-4 and "model config" in note
    assert resolve_aux_loss_coef(0.05, moe)[0] == 0.05
    assert resolve_aux_loss_coef(0, moe)[0] == 0.0
    assert resolve_aux_loss_coef(None, {"router_aux_loss_coef": 0.02, "text_config": {}})[0] == 0.02  # top level
    assert resolve_aux_loss_coef(None, {"text_config": {"hidden_size": 8}}) == (0.0, None)  # dense: unaffected
    with pytest.raises(ConfigError, match="training.router_aux_loss_coef"):
        resolve_aux_loss_coef(-1.0, moe)


@pytest.mark.parametrize("loss", LOSSES)
def test_dp2_with_accumulation_equals_one_process(runs: dict[str, Any], loss: str) -> None:
    _same(runs["root"], f"dp2_{loss}", f"one_{loss}")


@pytest.mark.parametrize("loss", LOSSES)
def test_pp2_with_moe_layers_on_both_stages_equals_one_process(runs: dict[str, Any], loss: str) -> None:
    _same(runs["root"], f"pp2_{loss}", f"one_{loss}")


@pytest.mark.parametrize("name", sorted(CHUNKED))
def test_chunked_loss_equals_one_process(runs: dict[str, Any], name: str) -> None:
    _same(runs["root"], name, f"one_{CHUNKED[name]}")

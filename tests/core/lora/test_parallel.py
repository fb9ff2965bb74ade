"""LoRA under every parallel layout trains like one process (gloo on CPU, fp32).

Tiny Qwen2.5-VL: the one-process reference runs in this process (the engine tests' worker), then
dp=2 (FSDP2), tp=2 (column/row-parallel base layers, with sequence parallel) and pp=2 (vision and
LLM adapters on different stages); tiny InternVL3 (its vision q/k/v fused in one HF tensor, split
in three sections per tp rank) at tp=2 on its own micro-batches. All in ONE launch of 2 processes.
Losses and the adapters must match (rtol 1e-5); the base stays as it was.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

_spec = importlib.util.spec_from_file_location(
    "engine_helpers", Path(__file__).parents[1] / "engine" / "_helpers.py")
helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(helpers)

pytestmark = pytest.mark.distributed
RTOL, ATOL = 1e-5, 1e-6
LORA = {"rank": 2, "alpha": 4.0, "targets": ["linear_qkv", "linear_proj", "linear_fc1", "linear_fc2"],
        "layers": {"vision_encoder": [0], "text_decoder": [1]}}


def lora_config(**parallel) -> dict:
    layers = parallel.pop("layers", None)
    cfg = helpers.base_config("qwen")
    cfg["lora"] = dict(LORA)
    cfg["parallel"].update(parallel)
    if layers:
        cfg["model"].update(vit_pp_layers=layers[0], llm_pp_layers=layers[1])
    return cfg


def internvl_jobs(tmp: Path) -> tuple[dict, dict]:
    """InternVL3: the one-process reference job and the tp=2 run (fixed micro-batches, checkpoints)."""
    import yaml

    from mm_core.family.hf_config import load_hf_config
    from mm_core.plugins import get_plugin_manager
    from mm_core.testing.parallel_checks import finetune_config
    from mm_internvl.tiny import make_inputs, save_tiny_model

    hf_dir = save_tiny_model(tmp / "internvl_hf", vocab_size=301)
    hf = load_hf_config(hf_dir)
    rows = [[("text", 3), ("image", 1), ("text", 4)]], [[("text", 2), ("image", 2), ("text", 3)]]
    torch.save([make_inputs(hf, r, seed=21 + i) for i, r in enumerate(rows)], tmp / "internvl_batches.pt")
    spec = get_plugin_manager().model_for_hf_config(hf)
    files = {}
    for name, parallel in (("internvl_one", {}), ("internvl_tp2", {"tp": 2})):
        cfg = finetune_config(spec, hf_dir, tmp / name / "ckpt", **parallel)
        cfg["lora"] = dict(LORA)
        files[name] = tmp / f"{name}.yaml"
        files[name].write_text(yaml.safe_dump(cfg, sort_keys=False))
    batches = str(tmp / "internvl_batches.pt")
    return ({"batches": batches, "runs": {"internvl_one": str(files["internvl_one"])}, "out": str(tmp)},
            {"config": str(files["internvl_tp2"]), "batches": batches})


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    import json
    import os
    import subprocess
    import sys

    from mm_core.testing.train_worker import run_all

    tmp = tmp_path_factory.mktemp("lora_parallel")
    records, weights = helpers.run_inprocess(tmp, "one", lora_config())
    reference, internvl_tp2 = internvl_jobs(tmp)
    (tmp / "internvl_one.json").write_text(json.dumps(reference))
    run_all(tmp / "internvl_one.json")
    layouts = {"dp2": lora_config(), "tp2": lora_config(tp=2, sequence_parallel=True),
               "pp2": lora_config(pp=2, layers=([2, 0], [0, 2]))}
    layouts["pp2"]["output"]["save"] = str(tmp / "ckpt_pp2")  # each stage saves its own adapters
    job = {"out": str(tmp), "runs": {name: {"config": str(helpers.write_config(tmp / f"{name}.yaml", cfg))}
                                     for name, cfg in layouts.items()}}
    job["runs"]["internvl_tp2"] = internvl_tp2
    (tmp / "job.json").write_text(json.dumps(job))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           str(Path(__file__).with_name("_worker.py")), str(tmp / "job.json")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=400, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-4000:]
    return tmp, [r["loss"] for r in records], weights


def test_one_process_trains_only_the_adapters(runs):
    from mm_core.lora.apply import is_adapter

    _, losses, weights = runs
    adapters = [k for k in weights if is_adapter(k)]
    # vision layer 0 and text layer 1: qkv (3 sections), proj, fc1 (2 sections), fc2 -> 7 A/B pairs each
    assert len(adapters) == 2 * 2 * 7
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("layout", ["dp2", "tp2", "pp2"])
def test_layout_equals_one_process(runs, layout):
    tmp, losses, want = runs
    got_losses = [r["loss"] for r in helpers.read_records(tmp / layout)]
    assert got_losses == pytest.approx(losses, rel=RTOL)
    got = helpers.worker.merged_weights(tmp / layout)
    assert set(got) == set(want)
    for k, v in want.items():
        torch.testing.assert_close(got[k], v, rtol=RTOL, atol=ATOL, msg=k)


def test_pp2_checkpoint_holds_every_stages_adapters(runs):
    from safetensors.torch import load_file

    from mm_core.lora.apply import is_adapter

    tmp, _, want = runs
    saved = load_file(str(tmp / "ckpt_pp2" / "iter_0000003" / "lora" / "adapter_model.safetensors"))
    assert set(saved) == {k for k in want if is_adapter(k)}
    for k, v in saved.items():
        torch.testing.assert_close(v, want[k], rtol=RTOL, atol=ATOL, msg=k)


def test_internvl_tp2_equals_one_process(runs):
    import json

    from safetensors.torch import load_file

    tmp = runs[0]
    want = json.loads((tmp / "internvl_one" / "records.json").read_text())
    got = json.loads((tmp / "internvl_tp2" / "records.json").read_text())
    assert [r["loss"] for r in got] == pytest.approx([r["loss"] for r in want], rel=RTOL)
    a = load_file(str(tmp / "internvl_one" / "ckpt" / "iter_0000002" / "lora" / "adapter_model.safetensors"))
    b = load_file(str(tmp / "internvl_tp2" / "ckpt" / "iter_0000002" / "lora" / "adapter_model.safetensors"))
    assert set(a) == set(b) and any(".lora_B." in k and v.abs().sum() > 0 for k, v in a.items())
    for k, v in a.items():
        torch.testing.assert_close(b[k], v, rtol=RTOL, atol=ATOL, msg=k)

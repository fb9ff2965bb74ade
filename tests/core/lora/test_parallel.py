"""LoRA under every parallel layout trains like one process (gloo on CPU, tiny Qwen2.5-VL, fp32).

The engine's shared test worker (tests/core/engine/_worker.py) runs the one-process reference in
this process, then dp=2 (FSDP2), tp=2 (column/row-parallel base layers; with sequence parallel)
and pp=2 (vision and LLM adapters on different stages) one after the other in ONE launch of 2
processes. Losses and the adapters after 3 steps must match (rtol 1e-5); the base stays as it was.
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


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lora_parallel")
    records, weights = helpers.run_inprocess(tmp, "one", lora_config())
    layouts = {"dp2": lora_config(), "tp2": lora_config(tp=2, sequence_parallel=True),
               "pp2": lora_config(pp=2, layers=([2, 0], [0, 2]))}
    layouts["pp2"]["output"]["save"] = str(tmp / "ckpt_pp2")  # each stage saves its own adapters
    proc = helpers.run_torchrun_many(tmp, 2, layouts)
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

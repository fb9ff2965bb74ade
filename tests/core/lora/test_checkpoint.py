"""Adapters-only checkpoints: what is saved, exact resume, the base fingerprint and its refusal."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import torch

from mm_core.errors import ConfigError
from mm_core.lora.apply import is_adapter
from mm_core.lora.fingerprint import weights_fingerprint

_spec = importlib.util.spec_from_file_location(
    "engine_helpers", Path(__file__).parents[1] / "engine" / "_helpers.py")
helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(helpers)

LORA = {"rank": 2, "alpha": 4.0, "targets": ["linear_qkv", "linear_fc2"], "layers": {"text_decoder": [0, 1]}}


def _config(hf_dir: Path, **overrides) -> dict:
    cfg = helpers.base_config("qwen", **overrides)
    cfg["model"] = {"hf_dir": str(hf_dir)}
    cfg["lora"] = dict(LORA)
    return cfg


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from mm_qwen.tiny import save_tiny_model

    tmp = tmp_path_factory.mktemp("lora_ckpt")
    hf = save_tiny_model(tmp / "hf", vision_depth=2, text_layers=2)
    three, _ = helpers.run_inprocess(tmp, "three", _config(hf, **{"output.save": str(tmp / "ckpt")}))
    six, _ = helpers.run_inprocess(tmp, "six", _config(hf, **{"training.train_iters": 6}))
    return tmp, hf, [r["loss"] for r in six]


def test_checkpoint_holds_adapters_and_the_base_fingerprint(trained):
    import torch.distributed.checkpoint as dcp
    from safetensors.torch import load_file

    tmp, hf, _ = trained
    it = tmp / "ckpt" / "iter_0000003"
    keys = [k for k in dcp.FileSystemReader(str(it)).read_metadata().state_dict_metadata if k.startswith("model.")]
    assert keys and all(is_adapter(k) for k in keys)  # the frozen base is not saved
    adapters = load_file(str(it / "lora" / "adapter_model.safetensors"))
    assert sorted(adapters) == sorted(k[len("model."):] for k in keys)
    assert len(adapters) == 2 * (3 + 1) * 2  # 2 layers x (qkv: 3 sections, fc2: 1) x (A, B)
    assert any(v.abs().sum() > 0 for k, v in adapters.items() if ".lora_B." in k)  # trained
    meta = json.loads((it / "lora" / "mm_lora.json").read_text())
    assert meta["base_fingerprint"] == weights_fingerprint(hf)
    assert meta["lora"]["rank"] == 2 and meta["scaling"] == 2.0 and meta["model"] == "qwen2_5_vl"


def test_resume_from_adapters_equals_one_run(trained, tmp_path):
    tmp, hf, six = trained
    records, _ = helpers.run_inprocess(tmp_path, "resumed", _config(hf, **{
        "output.load": str(tmp / "ckpt"), "training.train_iters": 6}))
    assert [r["step"] for r in records] == [4, 5, 6]
    assert [r["loss"] for r in records] == pytest.approx(six[3:], rel=1e-5)


def test_another_base_is_refused_naming_both_fingerprints(trained, tmp_path):
    from safetensors.torch import load_file, save_file

    tmp, hf, _ = trained
    other = tmp_path / "other"
    shutil.copytree(hf, other)
    f = other / "model.safetensors"
    weights = load_file(str(f))
    key = next(k for k in sorted(weights) if k.endswith("mlp.down_proj.weight"))
    weights[key] = weights[key] + 1e-3
    save_file(weights, str(f), metadata={"format": "pt"})
    want, got = weights_fingerprint(hf), weights_fingerprint(other)
    assert want != got
    with pytest.raises(ConfigError) as e:
        helpers.run_inprocess(tmp_path, "bad", _config(other, **{"output.load": str(tmp / "ckpt"),
                                                                  "training.train_iters": 6}))
    assert want in str(e.value) and got in str(e.value)


def test_fingerprint_ignores_how_tensors_are_spread_over_files(tmp_path):
    from mm_qwen.tiny import build_hf_model, tiny_config_dict

    model = build_hf_model(tiny_config_dict(vision_depth=1, text_layers=1), seed=3)
    model.save_pretrained(tmp_path / "one")
    model.save_pretrained(tmp_path / "many", max_shard_size="40KB")
    assert len(list((tmp_path / "many").glob("*.safetensors"))) > 1
    assert weights_fingerprint(tmp_path / "one") == weights_fingerprint(tmp_path / "many")
    with torch.no_grad():
        next(model.parameters()).view(-1)[0] += 1
    model.save_pretrained(tmp_path / "changed")
    assert weights_fingerprint(tmp_path / "changed") != weights_fingerprint(tmp_path / "one")

"""Loading: an mm dir (tp 1, pp 2) written by mm-convert equals the HF dir; mismatches say what to run."""

from __future__ import annotations

import json

import pytest
import torch

from mm_convert.cli import main as convert
from mm_core.nn.pretrained import load_pretrained as load_model
from mm_core.nn.state import CheckpointMismatchError
from mm_qwen.tiny import make_inputs, save_tiny_model, tiny_config_dict

VIT, LLM = [4, 0], [1, 3]


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("ckpt")
    hf_dir = save_tiny_model(root / "hf", tied=True)
    mm_dir = root / "mm"
    rc = convert(["Qwen2_5_VLConverter", "hf_to_mm", "--cfg.hf_config.hf_dir", str(hf_dir), "--cfg.mm_dir", str(mm_dir),
                  "--cfg.parallel_config.tp_size", "1", "--cfg.parallel_config.vit_pp_layers", json.dumps(VIT),
                  "--cfg.parallel_config.llm_pp_layers", json.dumps(LLM)])
    assert rc in (0, None)
    return hf_dir, mm_dir


def test_mm_dir_tp1_pp2_equals_hf_dir(dirs):
    hf_dir, mm_dir = dirs
    whole = load_model(hf_dir).eval()
    stages = [load_model(mm_dir, vit_pp_layers=VIT, llm_pp_layers=LLM, pp_rank=r, hf_config=hf_dir).eval()
              for r in range(2)]
    from_hf = [load_model(hf_dir, vit_pp_layers=VIT, llm_pp_layers=LLM, pp_rank=r).eval() for r in range(2)]
    for a, b in zip(stages, from_hf):  # the same tensors whichever way a rank reads them
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert "text_decoder.output_layer.weight" in stages[1].state_dict()  # tied: the last stage's copy
    batch = make_inputs(tiny_config_dict(tied=True), [[("text", 4), ("image", (1, 8, 8)), ("text", 3)],
                                                      [("text", 9)]])
    with torch.no_grad():
        torch.testing.assert_close(stages[1](stages[0](**batch), **batch), whole(**batch), atol=1e-6, rtol=1e-6)


def test_mm_dir_with_another_layout_says_to_resplit(dirs):
    hf_dir, mm_dir = dirs
    with pytest.raises(CheckpointMismatchError, match="resplit") as err:
        load_model(mm_dir, hf_config=hf_dir)  # a pp=2 checkpoint into one whole model
    assert "--cfg.parallel_config.tp_size 1" in str(err.value)
    with pytest.raises(CheckpointMismatchError, match="resplit"):
        load_model(mm_dir, hf_config=hf_dir, vit_pp_layers=[3, 1], llm_pp_layers=[0, 4], pp_rank=0)


def test_weights_that_do_not_fit_the_config_name_the_keys(dirs, tmp_path):
    import shutil

    hf_dir, _ = dirs
    config = json.loads((hf_dir / "config.json").read_text())
    config["text_config"]["num_hidden_layers"] = 5  # one layer more than the weights hold
    config["text_config"].pop("layer_types", None)
    bad = tmp_path / "bad"
    shutil.copytree(hf_dir, bad)
    (bad / "config.json").write_text(json.dumps(config))
    with pytest.raises(Exception, match=r"layers\.4") as err:
        load_model(bad)
    assert str(bad) in str(err.value)


def test_invalid_config_names_the_file(dirs, tmp_path):
    from mm_core.errors import ConfigError

    config = json.loads((dirs[0] / "config.json").read_text())
    config["text_config"]["num_hidden_layers"] = 5  # disagrees with its layer_types
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="config.json"):
        load_model(dirs[1], hf_config=tmp_path, vit_pp_layers=VIT, llm_pp_layers=LLM)


def test_neither_hf_nor_mm_dir_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointMismatchError, match="neither an HF model directory"):
        load_model(tmp_path)

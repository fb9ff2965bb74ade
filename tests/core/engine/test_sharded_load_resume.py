"""``output.load`` with a checkpoint: the HF weights are not read at all (the stage is materialised
empty and DCP fills every weight). Proof: the resumed run points at an HF dir holding only
config.json, and its weights are the checkpoint's, bit for bit."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest
import torch

pytest.importorskip("mm_glm")
_spec = importlib.util.spec_from_file_location("engine_helpers", Path(__file__).with_name("_helpers.py"))
helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(helpers)


def test_resume_reads_no_hf_weights(tmp_path: Path) -> None:
    from mm_glm.tiny_moe import save_tiny_model

    hf = save_tiny_model(tmp_path / "hf")
    cfg = helpers.base_config("toy", **{"training.train_iters": 1, "training.global_batch_size": 2})
    cfg["model"] = {"hf_dir": str(hf)}
    cfg["output"]["save"] = str(tmp_path / "ckpt")
    _, trained = helpers.run_inprocess(tmp_path, "first", cfg)

    bare = tmp_path / "config_only"  # no weights: reading them would fail
    bare.mkdir()
    shutil.copy(hf / "config.json", bare / "config.json")
    cfg["model"] = {"hf_dir": str(bare)}
    cfg["output"] = {**cfg["output"], "save": None, "load": str(tmp_path / "ckpt")}
    _, resumed = helpers.run_inprocess(tmp_path, "resumed", cfg)
    assert set(resumed) == set(trained)
    for key, value in trained.items():
        assert torch.equal(resumed[key], value), key

    (tmp_path / "nothing_saved_yet").mkdir()
    cfg["output"] = {**cfg["output"], "load": str(tmp_path / "nothing_saved_yet")}
    with pytest.raises(Exception, match="safetensors"):  # a fresh start does read them: the bare dir fails
        helpers.run_inprocess(tmp_path, "fresh", cfg)

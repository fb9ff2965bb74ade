"""Every check runs before output exists: each error names the field, stage or key, and no
directory (complete-looking or partial) is left behind."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from mm_convert import engine
from mm_convert.config import HFConfigSection, HfToMmConfig, MmToHfConfig, ParallelSection
from mm_convert.output import Progress
from mm_core.checkpoint import api
from mm_core.checkpoint.errors import ConfigError, ConversionError, KeyMismatchError, TargetExistsError


@pytest.fixture(scope="module")
def conv():
    return api.get_converter("Qwen2_5_VLConverter")


def run(conv, hf: Path, out: Path, tp=1, vit=None, llm=None, **kw) -> None:
    engine.hf_to_mm(conv, HfToMmConfig(mm_dir=str(out), hf_config=HFConfigSection(str(hf)),
                                       parallel_config=ParallelSection(tp, vit, llm), **kw), progress=False)


def nothing_left(parent: Path, name: str = "out") -> bool:
    return not (parent / name).exists() and not list(parent.glob(f".{name}.*"))


@pytest.mark.parametrize("tp,vit,llm,match", [
    (1, [4, 0], [1, 2], r"llm_pp_layers \[1, 2\] sums to 3 but the model has 4 llm layers"),
    (1, [5, 0], [0, 4], r"vit_pp_layers \[5, 0\] sums to 5 but the model has 4"),
    (1, [4, 0, 0], [0, 4], r"vit_pp_layers has 3 stage\(s\).*llm_pp_layers has 2 stage"),
    (1, [[4, 0]], [0, 4], r"disagree on the pipeline shape"),
    (1, [3, 1, 0], [1, 3, 0], r"stage 0 holds LLM layers but vision encoder layers remain on stage 1"),
    (1, [[2, 1], [1, 0]], [[0, 1], [1, 2]], r"stage 1 holds LLM layers but vision encoder layers remain on stage 2"),
    (4, None, None, r"tp_size 4 does not divide text_config.num_key_value_heads 2"),
    (1, [-1, 5], [0, 4], r"negative"),
    (0, None, None, r"tp_size must be >= 1"),
])
def test_layout_errors(conv, qwen_untied, tmp_path, tp, vit, llm, match):
    with pytest.raises(ConfigError, match=match):
        run(conv, qwen_untied, tmp_path / "out", tp, vit, llm)
    assert nothing_left(tmp_path)


def _edit_hf(src: Path, dst: Path, edit) -> Path:
    shutil.copytree(src, dst)
    tensors = load_file(dst / "model.safetensors")
    edit(tensors)
    save_file(tensors, dst / "model.safetensors", metadata={"format": "pt"})
    return dst


def test_missing_key_named(conv, qwen_untied, tmp_path):
    hf = _edit_hf(qwen_untied, tmp_path / "hf", lambda t: t.pop("model.layers.2.self_attn.k_proj.bias"))
    with pytest.raises(KeyMismatchError, match=r"missing \(1\): model.layers.2.self_attn.k_proj.bias"):
        run(conv, hf, tmp_path / "out")
    assert nothing_left(tmp_path)


def test_unexpected_key_named(conv, qwen_untied, tmp_path):
    hf = _edit_hf(qwen_untied, tmp_path / "hf", lambda t: t.update({"visual.blocks.9.norm1.weight": torch.ones(2)}))
    with pytest.raises(KeyMismatchError, match=r"unexpected \(1\): visual.blocks.9.norm1.weight"):
        run(conv, hf, tmp_path / "out")
    assert nothing_left(tmp_path)


def test_config_that_does_not_fit_the_weights(conv, qwen_untied, tmp_path):
    hf = tmp_path / "hf"
    shutil.copytree(qwen_untied, hf)
    cfg = json.loads((hf / "config.json").read_text())
    cfg["text_config"]["num_key_value_heads"] = 1  # q/k/v shapes no longer match the groups
    (hf / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match=r"text_decoder.decoder.layers.0.self_attention.linear_qkv.weight"):
        run(conv, hf, tmp_path / "out")
    assert nothing_left(tmp_path)


def test_non_empty_target_refused_then_overwritten(conv, qwen_untied, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("keep")
    with pytest.raises(TargetExistsError, match="--cfg.overwrite true"):
        run(conv, qwen_untied, out)
    assert (out / "precious.txt").read_text() == "keep"
    run(conv, qwen_untied, out, overwrite=True)
    assert not (out / "precious.txt").exists() and (out / "latest_checkpointed_iteration.txt").is_file()
    assert not list(tmp_path.glob(".out.*"))


def test_empty_target_is_fine(conv, qwen_untied, tmp_path):
    (tmp_path / "out").mkdir()
    run(conv, qwen_untied, tmp_path / "out")
    assert (tmp_path / "out" / "release" / "mp_rank_00" / "model.safetensors").is_file()


def test_interrupted_conversion_leaves_nothing(conv, qwen_untied, tmp_path, monkeypatch):
    calls = {"n": 0}
    real = Progress.update

    def failing(self, n):
        calls["n"] += 1
        if calls["n"] == 20:
            raise KeyboardInterrupt
        return real(self, n)

    monkeypatch.setattr(Progress, "update", failing)
    with pytest.raises(KeyboardInterrupt):
        run(conv, qwen_untied, tmp_path / "out", 2, [4, 0], [1, 3])
    assert calls["n"] == 20 and nothing_left(tmp_path)


def test_mm_dir_missing_rank_and_key(conv, qwen_untied, tmp_path):
    run(conv, qwen_untied, tmp_path / "mm", 2, [4, 0], [1, 3])
    shutil.rmtree(tmp_path / "mm" / "release" / "mp_rank_01_001")
    with pytest.raises(ConversionError, match=r"missing \['mp_rank_01_001'\]"):
        engine.mm_to_hf(conv, MmToHfConfig(mm_dir=str(tmp_path / "mm"), save_hf_dir=str(tmp_path / "out")))
    assert nothing_left(tmp_path)
    run(conv, qwen_untied, tmp_path / "mm2", 1, [4, 0], [1, 3])
    f = tmp_path / "mm2" / "release" / "mp_rank_00_001" / "model.safetensors"
    t = load_file(f)
    t.pop("text_decoder.decoder.layers.2.mlp.linear_fc2.weight")
    save_file(t, f)
    with pytest.raises(KeyMismatchError, match=r"mp_rank_00_001 \(stage 1\): missing \['text_decoder.decoder.layers.2.mlp"):
        engine.mm_to_hf(conv, MmToHfConfig(mm_dir=str(tmp_path / "mm2"), save_hf_dir=str(tmp_path / "out")))
    assert nothing_left(tmp_path)


def test_no_safetensors(conv, tmp_path):
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text("{}")
    (tmp_path / "hf" / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(ConversionError, match="safe_serialization=True"):
        run(conv, tmp_path / "hf", tmp_path / "out")
    assert nothing_left(tmp_path)


def test_dtype_kept(conv, qwen_tied, tmp_path):
    run(conv, qwen_tied, tmp_path / "mm", 2)
    state, _ = api.read_mm_rank(tmp_path / "mm", tp_rank=1)
    assert {t.dtype for t in state.values()} == {torch.bfloat16}


def test_partial_dir_of_a_killed_run_is_removed(conv, qwen_untied, tmp_path):
    stale = tmp_path / ".out.partial-999999999"  # no such process
    (stale / "release").mkdir(parents=True)
    run(conv, qwen_untied, tmp_path / "out")
    assert not stale.exists() and (tmp_path / "out" / "latest_checkpointed_iteration.txt").is_file()

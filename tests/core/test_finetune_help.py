"""`mm-run finetune --help` lists the values the installed plugins make valid, not only the types."""

from __future__ import annotations

import re
import types

import pytest
import yaml

from mm_core import hookimpl
from mm_core.cli.finetune import main as finetune_main
from mm_core.plugins import PluginManager, get_plugin_manager, reset_plugin_manager
from mm_core.specs import KernelSpec, LossSpec


def _help(capsys, *argv: str) -> str:
    assert finetune_main(["--help", *argv]) == 0
    return " ".join(capsys.readouterr().out.split())  # the help wraps lines: compare word runs


def _field(text: str, flag: str) -> str:
    """The help of one field: from its flag to the next ``(type: ...)``."""
    start = text.index(f"{flag} ", text.index("options:"))
    return text[start:text.index("(type:", start)]


def test_every_registered_value_is_listed(capsys):
    pm = get_plugin_manager()
    text = _help(capsys)
    loss = _field(text, "--training.loss_type LOSS_TYPE")
    assert all(k in loss for k in pm.losses.keys()) and "per_token_loss" in loss
    template = _field(text, "--data.config CONFIG")
    assert all(k in template for k in pm.formatters.keys()) and "qwen2vl" in template
    freeze = _field(text, "--model.freeze FREEZE, --model.freeze+ FREEZE")
    for spec in pm.models:  # no model configured: the groups of each
        assert f"{spec.name}: {', '.join(spec.module_groups)}" in freeze
    assert "cuda: attention=flash_varlen" in _field(text, "--parallel.device {auto,cpu,cuda,npu}")


def test_a_plugin_s_values_appear_once_it_is_installed(capsys):
    ours = types.SimpleNamespace(
        mm_register_losses=hookimpl(lambda register: register(
            LossSpec("focal_answer_loss", token_weights=lambda valid, ids: valid.float()))),
        mm_register_kernels=hookimpl(lambda register: register(
            KernelSpec("rms_norm", "cpu", "my_avx512", fn=lambda *a: None))))
    before = get_plugin_manager()
    try:
        reset_plugin_manager(PluginManager([("ours", ours)], entry_points_=False))
        text = _help(capsys)
    finally:
        reset_plugin_manager(before)
    assert "focal_answer_loss" in _field(text, "--training.loss_type LOSS_TYPE")
    assert re.search(r"cpu: [^;]*rms_norm=my_avx512", _field(text, "--parallel.device {auto,cpu,cuda,npu}"))
    assert "focal_answer_loss" not in _help(capsys)


def test_the_configured_model_s_freeze_groups_and_template(capsys, tmp_path):
    pytest.importorskip("mm_qwen")
    from mm_qwen.tiny import tiny_config_dict

    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"model": {"hf_config": tiny_config_dict(vision_depth=1, text_layers=1)}}))
    text = _help(capsys, "--config", str(cfg), "--nproc-per-node", "2")  # launcher flags are ignored
    freeze = _field(text, "--model.freeze FREEZE, --model.freeze+ FREEZE")
    assert "module groups of model 'qwen2_5_vl': vision_encoder, vision_projector, text_decoder" in freeze
    assert "internvl" not in freeze
    assert "model 'qwen2_5_vl' uses 'qwen2vl'" in _field(text, "--data.config CONFIG")


def test_help_prints_even_when_the_config_is_broken(capsys, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {nonsense_key: 1}\n")
    freeze = _field(_help(capsys, "--config", str(bad)), "--model.freeze FREEZE, --model.freeze+ FREEZE")
    assert "module groups per registered model" in freeze

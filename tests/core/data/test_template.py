"""The data template comes from the model's spec (ModelSpec.formatter) when unset, and a template
that does not fit the model is a ConfigError naming both, before any record is read."""

from __future__ import annotations

import json
import types

import pytest

from mm_core import hookimpl
from mm_core.data.config import DataConfig
from mm_core.data.template import resolve_template
from mm_core.errors import ConfigError
from mm_core.plugins import PluginManager, get_plugin_manager, reset_plugin_manager
from mm_core.specs import FormatterSpec, ModelSpec

VL = ModelSpec("vl", builder=lambda *a, **k: None, hf_model_types=("vl_hf",), formatter="vl_chat")
BARE = ModelSpec("bare", builder=lambda *a, **k: None)


@pytest.fixture(autouse=True)
def registry():
    before = get_plugin_manager()
    plugin = types.SimpleNamespace(
        mm_register_models=hookimpl(lambda register: [register(VL), register(BARE)]),
        mm_register_formatters=hookimpl(lambda register: [register(FormatterSpec(n, factory=lambda c: None))
                                                          for n in ("vl_chat", "other_chat")]))
    reset_plugin_manager(PluginManager([("fake", plugin)], entry_points_=False))
    yield
    reset_plugin_manager(before)


def test_an_unset_template_is_the_models_formatter():
    cfg = DataConfig()
    assert cfg.basic_parameters.template is None
    assert resolve_template(cfg, VL) == "vl_chat" and cfg.basic_parameters.template == "vl_chat"


def test_a_template_of_another_model_names_both():
    cfg = DataConfig()
    cfg.basic_parameters.template = "other_chat"
    with pytest.raises(ConfigError, match=r"template 'other_chat' does not fit model 'vl', whose formatter is "
                                          r"'vl_chat'"):
        resolve_template(cfg, VL, field="data.config.basic_parameters.template")


def test_without_a_formatter_in_the_spec_the_template_must_be_given_and_registered():
    cfg = DataConfig()
    with pytest.raises(ConfigError, match="not set and model 'bare' names no formatter.*other_chat"):
        resolve_template(cfg, BARE)
    cfg.basic_parameters.template = "other_chat"
    assert resolve_template(cfg, BARE) == "other_chat"  # nothing to check it against
    cfg.basic_parameters.template = "typo_chat"
    with pytest.raises(ConfigError, match="basic_parameters.template: unknown formatter 'typo_chat'"):
        resolve_template(cfg, BARE)


def test_without_a_spec_the_processor_directorys_model_decides(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "vl_hf"}))
    cfg = DataConfig()
    cfg.preprocess_parameters.model_name_or_path = str(tmp_path)
    assert resolve_template(cfg, None) == "vl_chat"
    cfg.basic_parameters.template = "other_chat"
    with pytest.raises(ConfigError, match="does not fit model 'vl'"):
        resolve_template(cfg, None)

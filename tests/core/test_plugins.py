"""Plugin loading: every hook, duplicates, broken plugins, MM_DISABLE_PLUGINS."""

from __future__ import annotations

import types

import pytest
import torch

from mm_core import hookimpl
from mm_core.errors import UnknownKeyError
from mm_core.plugins import PluginManager
from mm_core.specs import ConverterSpec, FormatterSpec, KernelSpec, LossSpec, ModelSpec


def _plugin(**hooks) -> types.SimpleNamespace:
    return types.SimpleNamespace(**{name: hookimpl(fn) for name, fn in hooks.items()})


def _manager(*plugins) -> PluginManager:
    return PluginManager(plugins, entry_points_=False)


def test_each_hook_registers_into_its_registry():
    model = ModelSpec("toy", builder=lambda cfg: "built", hf_model_types=("toy_hf",), hf_architectures=("ToyLM",))
    conv = ConverterSpec("ToyConverter", factory=lambda: "converter")
    fmt = FormatterSpec("toy_template", factory=lambda cfg: "formatter")
    loss = LossSpec("toy_loss", token_weights=lambda valid, ids: valid.float())
    kern = KernelSpec("rms_norm", "toydev", "fast", fn=lambda *a: "fast")
    pm = _manager(("toy", _plugin(
        mm_register_models=lambda register: register(model),
        mm_register_converters=lambda register: register(conv),
        mm_register_formatters=lambda register: register(fmt),
        mm_register_losses=lambda register: register(loss),
        mm_register_kernels=lambda register: register(kern),
    )))
    assert pm.model("toy").builder({}) == "built"
    assert pm.model_for_hf_config({"model_type": "toy_hf"}) is model
    assert pm.model_for_hf_config({"model_type": "x", "architectures": ["ToyLM"]}) is model
    assert pm.converter("ToyConverter").factory() == "converter"
    assert pm.formatter("toy_template").factory(None) == "formatter"
    assert pm.loss("toy_loss").token_weights(torch.ones(1, dtype=torch.bool), None).item() == 1.0
    assert kern in list(pm.kernels)
    assert pm.infos["toy"].provides == {
        "models": ["toy"], "converters": ["ToyConverter"], "formatters": ["toy_template"],
        "losses": ["toy_loss"], "kernels": ["rms_norm/toydev/fast"],
    }
    # core's own plugin is there too
    assert pm.loss("per_token_loss").normalize == "rank_mean_window"


def test_duplicate_key_names_both_plugins_and_keeps_the_first():
    def reg_factory():
        return lambda register: register(LossSpec("dup", token_weights=lambda v, i: v))

    pm = _manager(("first", _plugin(mm_register_losses=reg_factory())),
                  ("second", _plugin(mm_register_losses=reg_factory())))
    assert pm.infos["first"].status == "ok"
    second = pm.infos["second"]
    assert second.status == "broken"
    assert "'first'" in second.error and "'second'" in second.error and "loss type 'dup'" in second.error
    assert pm.losses.provider("dup") == "first"


def test_a_failing_plugin_registers_nothing():
    def reg(register):
        register(LossSpec("partial", token_weights=lambda v, i: v))
        raise RuntimeError("boom after registering")

    pm = _manager(("half", _plugin(mm_register_losses=reg)))
    assert pm.infos["half"].status == "broken"
    assert "partial" not in pm.losses


def test_broken_plugin_does_not_stop_others_and_its_error_shows_on_lookup():
    def broken_import():
        raise ImportError("No module named 'fancy_dependency'")

    good = _plugin(mm_register_models=lambda register: register(ModelSpec("good", builder=lambda c: 1)))
    pm = _manager(("good", good))
    pm._load("mm-broken", "9.9", "test", broken_import)
    assert pm.infos["mm-broken"].status == "broken"
    assert pm.model("good").builder(None) == 1
    with pytest.raises(UnknownKeyError) as exc:
        pm.model("broken_model")
    message = str(exc.value)
    assert "mm-broken" in message and "fancy_dependency" in message and "Traceback" in message
    with pytest.raises(UnknownKeyError, match="mm-broken"):
        pm.model_for_hf_config({"model_type": "broken_model"})


def test_unknown_hook_name_marks_plugin_broken():
    pm = _manager(("typo", _plugin(mm_register_model=lambda register: None)))
    assert pm.infos["typo"].status == "broken"
    assert "mm_register_model" in pm.infos["typo"].error


def test_disable_plugins_env(monkeypatch):
    monkeypatch.setenv("MM_DISABLE_PLUGINS", "skipme, other")
    reg = _plugin(mm_register_losses=lambda register: register(LossSpec("skipped", token_weights=lambda v, i: v)))
    pm = _manager(("skipme", reg))
    assert pm.infos["skipme"].status == "disabled"
    assert "skipped" not in pm.losses


def test_disable_installed_plugin_by_entry_point_name(monkeypatch):
    monkeypatch.setenv("MM_DISABLE_PLUGINS", "mm-qwen")
    pm = PluginManager()
    assert pm.infos["mm-qwen"].status == "disabled"
    assert pm.infos["mm-glm"].status == "ok"
    with pytest.raises(UnknownKeyError, match="qwen2_5_vl"):
        pm.model("qwen2_5_vl")


def test_installed_family_plugins_are_discovered():
    pm = PluginManager()
    for name in ("mm-core", "mm-convert", "mm-qwen", "mm-glm", "mm-internvl", "mm-visualglm"):
        assert pm.infos[name].status == "ok", pm.infos[name].error
    assert pm.model_for_hf_config({"architectures": ["Qwen2_5_VLForConditionalGeneration"]}).name == "qwen2_5_vl"


def test_every_hookspec_is_documented_and_loaded():
    import inspect

    from mm_core import hookspecs
    from mm_core.plugins import HOOKS

    specs = {n for n, f in inspect.getmembers(hookspecs, inspect.isfunction) if n.startswith("mm_")}
    assert specs == set(HOOKS)
    for name in specs:
        doc = inspect.getdoc(getattr(hookspecs, name))
        assert doc and "register(" in doc, f"{name} needs a docstring showing the register call"

"""A loss's normalize rule is checked when its plugin registers it: a misspelt one makes that
plugin broken (naming the plugin, the loss and the value) instead of failing at a training step."""

from __future__ import annotations

import types

import pytest

from mm_core import hookimpl
from mm_core.errors import UnknownKeyError
from mm_core.plugins import PluginManager
from mm_core.specs import NORMALIZE_MODES, LossSpec


def _loss_plugin(normalize: str) -> types.SimpleNamespace:
    spec = LossSpec("my_loss", token_weights=lambda valid, ids: valid.float(), normalize=normalize)
    return types.SimpleNamespace(mm_register_losses=hookimpl(lambda register: register(spec)))


@pytest.mark.parametrize("normalize", NORMALIZE_MODES)
def test_every_documented_rule_registers(normalize):
    pm = PluginManager([("losses", _loss_plugin(normalize))], entry_points_=False)
    assert pm.infos["losses"].status == "ok" and pm.loss("my_loss").normalize == normalize


def test_a_misspelt_rule_breaks_its_plugin_naming_plugin_and_value():
    pm = PluginManager([("my-plugin", _loss_plugin("micro-batch"))], entry_points_=False)
    info = pm.infos["my-plugin"]
    assert info.status == "broken"
    assert "plugin 'my-plugin' registers loss 'my_loss' with normalize 'micro-batch'" in info.error
    assert "rank_mean_window" in info.error  # the valid rules are listed
    assert "default" in pm.losses  # core's losses are unaffected
    with pytest.raises(UnknownKeyError, match="my-plugin"):  # using it shows why it is missing
        pm.loss("my_loss")

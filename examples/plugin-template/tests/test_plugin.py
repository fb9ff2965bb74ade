"""The plugin's own tests: run with `pytest` after `pip install -e .` next to mm-core and mm-convert."""

import torch

from mm_core.plugins import PluginManager


def test_registers_family_converter_and_loss():
    pm = PluginManager()
    info = pm.infos["mm-example-plugin"]
    assert info.status == "ok", info.error
    assert info.provides == {"models": ["example_vl"], "converters": ["ExampleConverter"],
                             "losses": ["log_length_loss"]}
    spec = pm.loss("log_length_loss")
    valid = torch.tensor([[True, True, False]])
    w = spec.token_weights(valid, torch.tensor([[0, 0, -1]]))
    assert torch.allclose(w, torch.tensor([[1, 1, 0]]) / torch.log1p(torch.tensor(2.0)))

"""The plugin's own tests: run with `pytest` after `pip install -e .` next to mm-core."""

import torch

from mm_core.plugins import PluginManager


def test_registers_model_and_loss():
    pm = PluginManager()
    assert pm.infos["mm-example-plugin"].status == "ok"
    model = pm.model("tiny_tagger").builder({"vocab_size": 16, "hidden_size": 4})
    assert model(torch.tensor([[1, 2, 3]])).shape == (1, 3, 16)
    spec = pm.loss("log_length_loss")
    valid = torch.tensor([[True, True, False]])
    w = spec.token_weights(valid, torch.tensor([[0, 0, -1]]))
    assert torch.allclose(w, torch.tensor([[1, 1, 0]]) / torch.log1p(torch.tensor(2.0)))

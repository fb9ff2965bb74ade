"""The AdamW kernel choice: fused on CPU by default, the same update as foreach, errors that name the field."""

from __future__ import annotations

import importlib.util
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn

from mm_core.engine.config import TrainingConfig
from mm_core.engine.optim import build_optimizer, use_fused
from mm_core.errors import ConfigError

_spec = importlib.util.spec_from_file_location("engine_helpers", Path(__file__).with_name("_helpers.py"))
helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(helpers)


def _train(impl: str, steps: int = 5) -> dict[str, torch.Tensor]:
    """A few AdamW steps (weight decay on, biases without) from fixed weights and data."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.LayerNorm(32), nn.GELU(), nn.Linear(32, 4))
    t = replace(TrainingConfig(), lr=1e-2, weight_decay=0.1, optimizer_impl=impl)
    opt = build_optimizer(model, t)
    assert opt.defaults["fused"] is (impl != "foreach") and opt.defaults["foreach"] is (impl == "foreach")
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x, y = torch.randn(8, 16, generator=g), torch.randn(8, 4, generator=g)
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_fused_and_foreach_give_the_same_weights():
    fused, foreach, start = _train("fused"), _train("foreach"), _train("foreach", steps=0)
    for k in fused:
        torch.testing.assert_close(fused[k], foreach[k], rtol=1e-5, atol=1e-6, msg=k)
        assert not torch.equal(fused[k], start[k]), f"{k} did not move: the comparison proves nothing"


def test_auto_is_fused_on_cpu_and_cuda_but_not_on_npu():
    assert use_fused("auto", "cpu") and use_fused("auto", "cuda")
    assert not use_fused("auto", "npu")  # the vendor plugin decides: fused only when asked for
    assert not use_fused("foreach", "cpu")


def test_fused_on_a_device_without_the_kernel_names_the_field():
    with pytest.raises(ConfigError, match="training.optimizer_impl.*foreach"):
        use_fused("fused", "meta")
    with pytest.raises(ConfigError, match="training.optimizer_impl: unknown value 'fast'"):
        use_fused("fast", "cpu")


def test_an_unknown_impl_is_refused_by_validate():
    from mm_core.engine.config import FinetuneConfig, validate

    cfg = FinetuneConfig()
    cfg.training = replace(cfg.training, optimizer_impl="fast", train_iters=1)
    with pytest.raises(ConfigError, match="training.optimizer_impl: unknown value 'fast'; valid: auto, fused, foreach"):
        validate(cfg, 1, hf_config={})


def test_engine_runs_fused_and_foreach_to_the_same_weights(tmp_path):
    cfg = helpers.base_config("toy", **{"training.weight_decay": 0.01})
    cfg["training"]["optimizer_impl"] = "fused"
    fused_rec, fused = helpers.run_inprocess(tmp_path, "fused", cfg)
    cfg["training"]["optimizer_impl"] = "foreach"
    foreach_rec, foreach = helpers.run_inprocess(tmp_path, "foreach", cfg)
    assert [r["loss"] for r in fused_rec] == pytest.approx([r["loss"] for r in foreach_rec], rel=1e-5)
    for k in fused:
        torch.testing.assert_close(fused[k], foreach[k], rtol=1e-4, atol=1e-5, msg=k)

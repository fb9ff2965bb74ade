"""The engine asks for typed contracts (mm_core.contracts) once, instead of probing attributes:
a stage model that lacks a member fails at build with all missing names; the sequence-parallel
capability is a flag of the model; auxiliary losses reach the loss through aux_losses()."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mm_core.contracts import Formatter, StageModel, missing_members, require, total_aux_loss
from mm_core.engine.loss import LossComputer, MicroBatch
from mm_core.engine.model_setup import _apply_tp
from mm_core.errors import ConfigError
from mm_core.specs import ModelSpec
from mm_core.testing.toy_model import DEFAULT_CONFIG, build_model


class Bare(nn.Module):
    def forward(self, x):
        return x


def test_the_toy_model_fulfils_the_stage_model_contract():
    model = build_model(DEFAULT_CONFIG)
    assert isinstance(model, StageModel) and missing_members(model, StageModel) == []
    assert model.aux_losses() == [] and total_aux_loss(model) is None


def test_a_model_without_the_contract_fails_naming_every_missing_member():
    with pytest.raises(ConfigError, match="model 'bare'.*lacks aux_losses, output_weight, supports_sequence_parallel"):
        require(Bare(), StageModel, "model 'bare'")


def test_sequence_parallel_is_refused_by_the_models_flag_before_any_plan_runs():
    model = build_model(DEFAULT_CONFIG)
    called = []
    spec = ModelSpec("toy", builder=build_model, tp_plan=lambda m, **kw: called.append(kw) or {})
    with pytest.raises(ConfigError, match="parallel.sequence_parallel: model 'toy' does not support it"):
        _apply_tp(model, spec, None, sequence_parallel=True)
    assert called == []


def test_aux_losses_are_added_with_their_coefficient():
    model = build_model(DEFAULT_CONFIG)
    aux = [torch.tensor(0.5), torch.tensor(1.5)]
    model.aux_losses = lambda: aux
    hidden = torch.randn(1, 3, DEFAULT_CONFIG["hidden_size"])
    targets = torch.tensor([[1, 2, -100]])
    mb = MicroBatch({}, targets, torch.tensor([[1.0, 1.0, 0.0]]), 2.0, 1.0, 2, 1, 3)
    plain = LossComputer("default", 16)(hidden, mb, model)
    with_aux = LossComputer("default", 16, router_aux_loss_coef=0.1)(hidden, mb, model)
    torch.testing.assert_close(with_aux - plain, torch.tensor(0.2))
    model.aux_losses = lambda: torch.stack(aux)  # a tensor of losses works the same
    torch.testing.assert_close(total_aux_loss(model), torch.tensor(2.0))


def test_formatter_contract_is_checked_without_evaluating_properties():
    class Lazy:
        loads = 0

        @property
        def pad_token_id(self) -> int:
            Lazy.loads += 1
            return 0

        def encode(self, sample, *, pixels=True):
            return {}

        def fingerprint(self):
            return "x"

    assert missing_members(Lazy(), Formatter) == ["dummy_vision"] and Lazy.loads == 0
    with pytest.raises(ConfigError, match="Formatter: it lacks dummy_vision"):
        require(Lazy(), Formatter, "formatter 'lazy'")

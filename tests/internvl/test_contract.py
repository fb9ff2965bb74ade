"""InternVL3's stage model fulfils mm_core.contracts.StageModel (through mm_core.family)."""

from __future__ import annotations

from mm_core.contracts import StageModel, missing_members
from mm_internvl.model import build_model
from mm_internvl.tiny import tiny_config_dict


def test_stage_model_fulfils_the_contract():
    model = build_model(tiny_config_dict())
    assert missing_members(model, StageModel) == [] and model.aux_losses() == []
    assert model.supports_sequence_parallel  # the conformance suite trains it at tp 2 with sequence parallel

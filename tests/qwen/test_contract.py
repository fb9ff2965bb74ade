"""Qwen2.5-VL fulfils mm_core.contracts: the stage model (through mm_core.family.StageModel, with
sequence parallel) and the formatter."""

from __future__ import annotations

from mm_core.contracts import Formatter, StageModel, missing_members
from mm_qwen.formatter import Qwen2VLFormatter
from mm_qwen.model import build_model
from mm_qwen.tiny import tiny_config_dict


def test_stage_models_and_formatter_fulfil_the_contracts():
    for layout in ({}, {"vit_pp_layers": [4, 0], "llm_pp_layers": [0, 4], "pp_rank": 1}):
        model = build_model(tiny_config_dict(), **layout)
        assert missing_members(model, StageModel) == []
        assert model.supports_sequence_parallel and model.aux_losses() == []
    assert missing_members(Qwen2VLFormatter, Formatter) == []

"""Qwen2.5-VL fulfils mm_core.contracts: the stage model (through mm_core.family.stage_model, with
sequence parallel) and the formatter; its spec's formatter is the data template's default."""

from __future__ import annotations

import pytest
import yaml

from mm_core.contracts import Formatter, StageModel, missing_members
from mm_core.engine.config import parse_finetune_config, validate
from mm_core.errors import ConfigError
from mm_qwen.formatter import Qwen2VLFormatter
from mm_qwen.model import build_model
from mm_qwen.tiny import tiny_config_dict


def test_stage_models_and_formatter_fulfil_the_contracts():
    for layout in ({}, {"vit_pp_layers": [4, 0], "llm_pp_layers": [0, 4], "pp_rank": 1}):
        model = build_model(tiny_config_dict(), **layout)
        assert missing_members(model, StageModel) == []
        assert model.supports_sequence_parallel and model.aux_losses() == []
    assert missing_members(Qwen2VLFormatter, Formatter) == []


def _finetune_config(tmp_path, template):
    basic = {"dataset_dir": str(tmp_path), "dataset": "d.jsonl", **({"template": template} if template else {})}
    cfg = {"model": {"hf_config": tiny_config_dict(), "random_init": True},
           "data": {"source": "mllm", "config": {"basic_parameters": basic}},
           "training": {"micro_batch_size": 1, "global_batch_size": 1, "seq_length": 32, "train_iters": 1}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    return parse_finetune_config(["--config", str(tmp_path / "c.yaml")])


def test_the_data_template_defaults_to_the_specs_formatter_and_a_wrong_one_fails_in_validate(tmp_path):
    cfg = _finetune_config(tmp_path, None)
    validate(cfg, 1)
    assert cfg.data.config.basic_parameters.template == "qwen2vl"
    with pytest.raises(ConfigError, match="data.config.basic_parameters.template: template 'llava' does not fit "
                                          "model 'qwen2_5_vl', whose formatter is 'qwen2vl'"):
        validate(_finetune_config(tmp_path, "llava"), 1)

"""mm_core.family.hf_config: the one reader of HF configs (dict, config.json or HF dir; nested
transformers-5 or flat layout); errors name the file."""

from __future__ import annotations

import json

import pytest

from mm_core.errors import ConfigError
from mm_core.family.hf_config import is_tied, layer_counts, read_hf_config, text_config, vision_config

NESTED = {"model_type": "qwen2_5_vl", "tie_word_embeddings": True, "vision_config": {"depth": 32},
          "text_config": {"num_hidden_layers": 36, "vocab_size": 151936}}
FLAT = {"model_type": "qwen2_5_vl", "num_hidden_layers": 28, "vocab_size": 152064, "tie_word_embeddings": False,
        "vision_config": {"depth": 32}}
INTERNVIT = {"vision_config": {"num_hidden_layers": 24}, "llm_config": {"num_hidden_layers": 28,
                                                                          "tie_word_embeddings": True}}


def test_dict_file_and_directory_give_the_same_config(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(NESTED))
    assert read_hf_config(NESTED) == (NESTED, "<config dict>")
    assert read_hf_config(tmp_path) == (NESTED, str(tmp_path / "config.json"))
    assert read_hf_config(tmp_path / "config.json")[0] == NESTED


def test_errors_name_the_file_and_the_fix(tmp_path):
    with pytest.raises(ConfigError, match=f"{tmp_path}/config.json: no such file; use --the-flag"):
        read_hf_config(tmp_path, hint="use --the-flag")
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="config.json: not valid JSON"):
        read_hf_config(tmp_path)
    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(ConfigError, match="holds a list, not a JSON object"):
        read_hf_config(tmp_path)


@pytest.mark.parametrize("config,layers,vocab,tied", [(NESTED, (32, 36), 151936, True),
                                                      (FLAT, (32, 28), 152064, False),
                                                      (INTERNVIT, (24, 28), None, True)])
def test_nested_and_flat_layouts_read_alike(config, layers, vocab, tied):
    assert layer_counts(config) == layers
    assert text_config(config).get("vocab_size") == vocab
    assert is_tied(config) is tied


def test_the_top_level_tie_flag_wins_and_vision_config_can_be_required():
    assert not is_tied({"tie_word_embeddings": False, "text_config": {"tie_word_embeddings": True}})
    assert vision_config({}, required=False) == {}
    with pytest.raises(ConfigError, match="x.json: no vision_config"):
        vision_config({}, source="x.json")

"""Records in InternVL's / LLaVA's layout (``image``/``video``, ``conversations`` of ``from``/``value``)
are read as they are, and the seed's ``data_path``/``data_folder`` name the file and media root."""

from __future__ import annotations

import json
import os

import pytest

from mm_core.data.bad_records import BadRecord
from mm_core.data.config import AttrParameters, BasicParameters, data_config_from_dict
from mm_core.data.records import RawRecord, parse_record
from mm_core.errors import ConfigError


def _parse(record: dict, tmp_path, attr: AttrParameters | None = None):
    for name in ("a.jpg", "b.jpg", "v.mp4"):
        (tmp_path / name).write_bytes(b"x")
    return parse_record(RawRecord("f.jsonl:1", json.dumps(record)), attr or AttrParameters(), str(tmp_path))


def test_internvl_records_are_read_as_they_are(tmp_path):
    s = _parse({"id": 1, "image": "a.jpg", "conversations": [
        {"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "A cat."}]}, tmp_path)
    assert s.messages == [{"role": "user", "content": "<image>\nWhat?"}, {"role": "assistant", "content": "A cat."}]
    assert s.images == [str(tmp_path / "a.jpg")] and s.videos == []
    s = _parse({"image": ["a.jpg", "b.jpg"], "conversations": [
        {"from": "system", "value": "Be brief."}, {"from": "human", "value": "<image><image> Same?"},
        {"from": "gpt", "value": "No."}]}, tmp_path)
    assert len(s.images) == 2 and s.system == "Be brief."
    s = _parse({"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]}, tmp_path)
    assert s.images == [] and s.messages[1]["content"] == "Hello"


def test_a_single_medium_without_placeholder_goes_first_as_internvl_does(tmp_path):
    s = _parse({"image": "a.jpg", "conversations": [
        {"from": "human", "value": "What?"}, {"from": "gpt", "value": "A cat."}]}, tmp_path)
    assert s.messages[0]["content"] == "<image>\nWhat?"
    s = _parse({"video": "v.mp4", "conversations": [
        {"from": "human", "value": "What happens?"}, {"from": "gpt", "value": "Nothing."}]}, tmp_path)
    assert s.messages[0]["content"] == "<video>\nWhat happens?" and s.videos == [str(tmp_path / "v.mp4")]
    with pytest.raises(BadRecord, match="placeholder"):  # two images need their two placeholders
        _parse({"image": ["a.jpg", "b.jpg"], "conversations": [
            {"from": "human", "value": "<image> and?"}, {"from": "gpt", "value": "x"}]}, tmp_path)
    with pytest.raises(BadRecord, match="role"):
        _parse({"conversations": [{"from": "bot", "value": "x"}]}, tmp_path)


def test_the_mllm_layout_wins_when_both_are_present(tmp_path):
    s = _parse({"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}],
                "conversations": "ignored"}, tmp_path)
    assert s.messages[0]["content"] == "Q"


def test_seed_names_data_path_and_data_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = data_config_from_dict({"dataset_param": {"dataset_type": "multimodal", "basic_parameters": {
        "data_path": "data/train.jsonl", "data_folder": "/media/root"}}})
    basic = cfg.basic_parameters
    assert basic.dataset == os.path.join(str(tmp_path), "data", "train.jsonl") and basic.dataset_dir == "/media/root"
    assert BasicParameters(**vars(basic)) == basic  # a saved config loads back unchanged
    with pytest.raises(ConfigError, match="data_path"):
        BasicParameters(data_path="a.jsonl", dataset="b.jsonl")
    with pytest.raises(ConfigError, match="data_folder"):
        BasicParameters(data_folder="/a", dataset_dir="/b")

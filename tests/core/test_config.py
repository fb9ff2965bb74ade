"""Typed config parsing: files, overrides, and errors that name the field and the file."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from mm_core.config import parse_config, save_config
from mm_core.errors import ConfigError


@dataclass
class Train:
    lr: float = 1e-3
    steps: int = 10


@dataclass
class Model:
    path: str = ""
    freeze: list[str] = field(default_factory=list)
    llm_pp_layers: list[int] | list[list[int]] | None = None


@dataclass
class Cfg:
    model: Model = field(default_factory=Model)
    train: Train = field(default_factory=Train)


def test_file_plus_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lr: 0.1\n  steps: 3\nmodel:\n  freeze: [vision_encoder]\n")
    cfg = parse_config(Cfg, ["--config", str(path), "--train.steps", "7", "--model.llm_pp_layers", "[[1,2],[3,4]]"], prog="t")
    assert cfg == Cfg(Model("", ["vision_encoder"], [[1, 2], [3, 4]]), Train(0.1, 7))


def test_round_trip_through_save_config(tmp_path):
    cfg = Cfg(Model("m", ["a"], [1, 2]), Train(0.5, 2))
    save_config(cfg, tmp_path / "saved.yaml")
    assert parse_config(Cfg, ["--config", str(tmp_path / "saved.yaml")], prog="t") == cfg


def test_unknown_key_in_file_names_file_and_field(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model:\n  pathz: x\n")
    with pytest.raises(ConfigError) as exc:
        parse_config(Cfg, ["--config", str(path)], prog="t")
    assert str(path) in str(exc.value) and "model.pathz" in str(exc.value)
    assert "path, freeze" in str(exc.value)  # lists the valid fields


def test_wrong_type_in_file_names_file_and_field(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  steps: many\n")
    with pytest.raises(ConfigError) as exc:
        parse_config(Cfg, ["--config", str(path)], prog="t")
    assert str(path) in str(exc.value) and "train.steps" in str(exc.value) and "many" in str(exc.value)


def test_command_line_errors_name_the_field():
    with pytest.raises(ConfigError, match="command line: field 'train.lr'"):
        parse_config(Cfg, ["--train.lr", "fast"], prog="t")
    with pytest.raises(ConfigError, match=r"unknown field\(s\) --train.bogus"):
        parse_config(Cfg, ["--train.bogus", "1"], prog="t")


def test_missing_config_file():
    with pytest.raises(ConfigError, match="does not exist"):
        parse_config(Cfg, ["--config", "/nonexistent/c.yaml"], prog="t")


def test_finetune_data_section_is_typed_on_the_command_line(tmp_path):
    """``data.config`` is the data pipeline's dataclass: an override arrives as an int, and a
    misspelt field is refused with its name (it used to arrive as a string and fail in the loader)."""
    import yaml

    from mm_core.data.config import DataConfig
    from mm_core.engine.config import parse_finetune_config

    path = tmp_path / "ft.yaml"
    path.write_text(yaml.safe_dump({"data": {"config": {"basic_parameters": {"dataset": "train.json"},
                                                        "dataloader_param": {"num_workers": 2}}}}))
    cfg = parse_finetune_config(["--config", str(path), "--data.config.dataloader_param.num_workers", "0"])
    assert isinstance(cfg.data.config, DataConfig)
    assert cfg.data.config.dataloader_param.num_workers == 0
    assert cfg.data.config.basic_parameters.dataset == "train.json"
    with pytest.raises(ConfigError, match="num_workerz"):
        parse_finetune_config(["--config", str(path), "--data.config.dataloader_param.num_workerz", "0"])
    path.write_text(yaml.safe_dump({"data": {"config": {"basic_parameters": {"datset": "typo.json"}}}}))
    with pytest.raises(ConfigError, match="datset"):
        parse_finetune_config(["--config", str(path)])

"""The data config: the field names users know from the reference's ``data.json``.

Sequence length, micro-batch size and data-parallel layout come from the training config and
are passed to :func:`mm_core.data.build_dataloader` separately.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from mm_core.errors import ConfigError


@dataclass
class PreprocessParameters:
    """How media are turned into pixels (passed to the family's HF processor)."""

    model_name_or_path: str = ""
    image_max_pixels: int = 262144
    image_min_pixels: int = 1024
    video_max_pixels: int = 16384
    video_min_pixels: int = 256
    video_fps: float = 2.0
    video_maxlen: int = 64
    # dynamic tiling (InternVL): tiles per image, before the thumbnail
    min_dynamic_patch: int = 1
    max_dynamic_patch: int = 12


@dataclass
class BasicParameters:
    """Which files, which template, and how samples are turned into sequences."""

    template: str | None = None  # the formatter; default: the model's (ModelSpec.formatter)
    dataset_dir: str = "."
    dataset: str = ""  # comma-separated list of .json / .jsonl files (relative to dataset_dir)
    cache_dir: str | None = None
    max_samples: int | None = None
    streaming: bool = False
    packing: bool = False
    train_on_prompt: bool = False
    mask_history: bool = False
    # replies of Thinking models, "<think>...</think>" then the answer (mm_core.data.thinking): false
    # leaves the thinking, tags included, out of the loss, so only the answer and the end of the reply
    # are learnt; true trains on the whole reply. Formatters whose replies have no thinking ignore it.
    train_on_thinking: bool = True
    strict: bool = False  # the first bad record is an error (file and line) instead of skipped
    pack_buffer: int = 64  # streaming: samples packed together; map-style: samples per packing window
    # with packing: "fill" fills rows to the sequence length and micro_batch_size counts rows, so a
    # step holds more samples than without packing (the run says how many); "fixed" packs each
    # micro-batch's micro_batch_size samples into as few rows as they fit: the samples per optimizer
    # step stay what they are without packing, only the padding goes
    packing_samples: Literal["fill", "fixed"] = "fill"
    # the names of InternVL's data configs (the seed's): data_path, one records file relative to the
    # working directory, becomes ``dataset``; data_folder, the media root, becomes ``dataset_dir``
    data_path: str | None = None
    data_folder: str | None = None

    def __post_init__(self) -> None:
        if self.data_path is not None:
            if self.dataset and self.dataset != os.path.abspath(self.data_path):
                raise ConfigError("basic_parameters: give data_path (InternVL's name) or dataset, not both")
            self.dataset, self.data_path = os.path.abspath(self.data_path), None
        if self.data_folder is not None:
            if self.dataset_dir not in (".", self.data_folder):
                raise ConfigError("basic_parameters: give data_folder (InternVL's name) or dataset_dir, not both")
            self.dataset_dir, self.data_folder = self.data_folder, None


@dataclass
class AttrParameters:
    """Column names and role tags, so sharegpt/LLaVA-style files work without conversion."""

    messages: str = "messages"
    images: str = "images"
    videos: str = "videos"
    system: str = "system"
    role_tag: str = "role"
    content_tag: str = "content"
    user_tag: str = "user"
    assistant_tag: str = "assistant"
    system_tag: str = "system"


@dataclass
class DataloaderParameters:
    """How the loader walks the data."""

    sampler_type: str = "random"  # "random" (shuffled each epoch) or "sequential"
    num_workers: int = 0
    shuffle: bool = True
    # streaming: with shuffle, each window of this many samples (read in data order) is shuffled,
    # like a shuffle buffer; windows are reproducible, so resume stays exact. Memory grows with it.
    shuffle_buffer: int = 256
    drop_last: bool = True
    pin_memory: bool = False
    prefetch_factor: int = 2


@dataclass
class DataConfig:
    """Everything the data pipeline needs apart from sequence length and batch layout."""

    preprocess_parameters: PreprocessParameters = field(default_factory=PreprocessParameters)
    basic_parameters: BasicParameters = field(default_factory=BasicParameters)
    attr: AttrParameters = field(default_factory=AttrParameters)
    dataloader_param: DataloaderParameters = field(default_factory=DataloaderParameters)


_SECTIONS = {
    "preprocess_parameters": PreprocessParameters,
    "basic_parameters": BasicParameters,
    "attr": AttrParameters,
    "dataloader_param": DataloaderParameters,
}
PACKING_SAMPLES = ("fill", "fixed")
_REFERENCE_ONLY_KEYS = {"dataset_type"}  # fields of the reference's data.json that mean nothing here


def data_config_from_dict(d: Mapping[str, Any], source: str = "data config") -> DataConfig:
    """A :class:`DataConfig` from the reference's ``data.json`` layout (``dataset_param`` may wrap
    the sections) or from the flat four-section layout; unknown fields are errors naming the field."""
    d = dict(d)
    if isinstance(d.get("dataset_param"), Mapping):
        inner = dict(d.pop("dataset_param"))
        d = {**inner, **d}
    cfg = DataConfig()
    for key, value in d.items():
        if key in _REFERENCE_ONLY_KEYS:
            continue
        if key not in _SECTIONS:
            raise ConfigError(f"{source}: unknown data section '{key}'; valid sections: {', '.join(_SECTIONS)}")
        if not isinstance(value, Mapping):
            raise ConfigError(f"{source}: '{key}' must be a mapping of fields")
        cls = _SECTIONS[key]
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(value) - names)
        if unknown:
            raise ConfigError(f"{source}: unknown field(s) {', '.join(f'{key}.{u}' for u in unknown)}; "
                              f"valid fields of '{key}': {', '.join(sorted(names))}")
        setattr(cfg, key, cls(**value))
    return cfg


def with_model_dir(config: DataConfig, hf_dir: str | os.PathLike[str] | None) -> DataConfig:
    """``config`` whose tokenizer/processor directory defaults to the model's HF dir (``model.hf_dir``
    of a training config): training and ``mm-run data inspect`` read the same files."""
    if not config.preprocess_parameters.model_name_or_path and hf_dir:
        config.preprocess_parameters.model_name_or_path = os.fspath(hf_dir)
    return config


def load_data_config(value: DataConfig | Mapping[str, Any] | str | os.PathLike[str]) -> DataConfig:
    """Accept a DataConfig, a dict of its sections, or a JSON/YAML file (the reference's data.json)."""
    if isinstance(value, DataConfig):
        return value
    if isinstance(value, Mapping):
        return data_config_from_dict(value)
    path = Path(value)
    if not path.is_file():
        raise ConfigError(f"data config file '{path}' does not exist")
    import yaml

    try:
        raw = yaml.safe_load(path.read_text())  # YAML is a superset of JSON
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid JSON/YAML ({e})") from None
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{path}: expected a mapping of data sections")
    return data_config_from_dict(raw, str(path))

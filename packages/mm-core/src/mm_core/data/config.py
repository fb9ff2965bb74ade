"""The data config: the field names users know from the reference's ``data.json``.

Sequence length, micro-batch size and data-parallel layout come from the training config and
are passed to :func:`mm_core.data.build_dataloader` separately.
"""

from __future__ import annotations

from dataclasses import dataclass, field


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


@dataclass
class BasicParameters:
    """Which files, which template, and how samples are turned into sequences."""

    template: str = "qwen2vl"
    dataset_dir: str = "."
    dataset: str = ""  # comma-separated list of .json / .jsonl files (relative to dataset_dir)
    cache_dir: str | None = None
    max_samples: int | None = None
    streaming: bool = False
    packing: bool = False
    train_on_prompt: bool = False
    mask_history: bool = False
    strict: bool = False  # the first bad record is an error (file and line) instead of skipped
    pack_buffer: int = 64  # streaming: samples packed together; map-style: samples per packing window


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

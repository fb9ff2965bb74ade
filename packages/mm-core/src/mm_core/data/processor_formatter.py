"""What every family formatter shares: the model directory it reads, checked up front, and the HF
processor loaded lazily from it and dropped when pickled (each DataLoader worker loads its own
copy instead of receiving a large pickled tokenizer)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mm_core.data.config import DataConfig
from mm_core.data.hf_processor import load_processor
from mm_core.errors import ConfigError


def require_model_dir(data_config: DataConfig, holds: str) -> str:
    """``preprocess_parameters.model_name_or_path``, which must be a directory holding ``holds``."""
    path = data_config.preprocess_parameters.model_name_or_path
    if not path:
        raise ConfigError(f"preprocess_parameters.model_name_or_path is empty: give the HF model directory that "
                          f"holds {holds}")
    if not Path(path).is_dir():
        raise ConfigError(f"preprocess_parameters.model_name_or_path: '{path}' is not a directory")
    return path


class ProcessorFormatter:
    """Base of formatters built on one HF processor (``load_processor`` of the model directory)."""

    model_dir_holds = "the tokenizer and processor files"  # what the error for a bad directory asks for

    def __init__(self, data_config: DataConfig):
        self.config = data_config
        require_model_dir(data_config, self.model_dir_holds)
        self._processor: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_processor": None}

    @property
    def processor(self) -> Any:
        if self._processor is None:
            self._processor = load_processor(self.config.preprocess_parameters.model_name_or_path)
        return self._processor

    @property
    def tokenizer(self) -> Any:
        return self.processor.tokenizer

    @property
    def pad_token_id(self) -> int:
        return int(self.tokenizer.pad_token_id)

"""The data pipeline shared by every family: records -> formatter -> collate/pack -> micro-batches.

Entry point for the engine: :func:`build_dataloader` (see its docstring). A family contributes
only its formatter (``mm_register_formatters``), an object with ``encode(sample, *, pixels=True)``
-> ``{"input_ids", "labels", pixel tensors...}``, ``dummy_vision()``, ``pad_token_id`` and
``fingerprint()``.
"""

from mm_core.data.bad_records import REASONS, BadRecord, BadRecordStats, DataError
from mm_core.data.collate import collate
from mm_core.data.config import (
    AttrParameters,
    BasicParameters,
    DataConfig,
    DataloaderParameters,
    PreprocessParameters,
    data_config_from_dict,
    load_data_config,
)
from mm_core.data.loader import MMDataLoader, build_dataloader
from mm_core.data.packing import pack_rows
from mm_core.data.records import Sample, parse_record

__all__ = [
    "REASONS", "AttrParameters", "BadRecord", "BadRecordStats", "BasicParameters", "DataConfig", "DataError",
    "DataloaderParameters", "MMDataLoader", "PreprocessParameters", "Sample", "build_dataloader", "collate", "data_config_from_dict", "load_data_config",
    "pack_rows", "parse_record",
]

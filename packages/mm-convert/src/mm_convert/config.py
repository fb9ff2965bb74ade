"""Typed configs of the verbs (``--cfg.<field>``), in the reference system's shape."""

from __future__ import annotations

from dataclasses import dataclass, field

# a layer list: one count per stage, or nested per virtual pipeline chunk
LayerList = list[int] | list[list[int]] | None


@dataclass
class HFConfigSection:
    """The HF side."""

    hf_dir: str | None = None  # HF model directory (config.json + *.safetensors)


@dataclass
class ParallelSection:
    """The target layout."""

    tp_size: int = 1
    vit_pp_layers: LayerList = None  # vision layers per pipeline stage, e.g. [32,0,0,0]
    llm_pp_layers: LayerList = None  # LLM layers per pipeline stage, e.g. [1,10,10,7] or [[1,10],[10,7]]


@dataclass
class HfToMmConfig:
    mm_dir: str  # output mm directory
    hf_config: HFConfigSection = field(default_factory=HFConfigSection)
    parallel_config: ParallelSection = field(default_factory=ParallelSection)
    overwrite: bool = False  # replace a non-empty mm_dir
    trust_remote_code: bool = False  # accepted for compatibility; conversion never runs model code


@dataclass
class MmToHfConfig:
    mm_dir: str  # mm directory (or one of its iter_%07d / release directories)
    save_hf_dir: str  # output HF directory
    hf_config: HFConfigSection = field(default_factory=HFConfigSection)  # original HF dir: config/tokenizer files
    iteration: str | None = None  # "release", an iteration number or iter_%07d; default: the latest
    overwrite: bool = False
    max_shard_size_gb: float = 5.0
    trust_remote_code: bool = False


@dataclass
class ResplitConfig:
    mm_dir: str  # source mm directory
    save_dir: str  # output mm directory
    parallel_config: ParallelSection = field(default_factory=ParallelSection)
    hf_config: HFConfigSection = field(default_factory=HFConfigSection)  # only if mm_dir has no config.json
    iteration: str | None = None
    overwrite: bool = False
    trust_remote_code: bool = False


@dataclass
class HfToDcpConfig:
    hf_dir: str
    save_dir: str
    overwrite: bool = False


@dataclass
class DcpToHfConfig:
    hf_dir: str
    dcp_dir: str
    save_dir: str
    overwrite: bool = False
    max_shard_size_gb: float = 5.0

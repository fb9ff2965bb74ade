"""Typed configs of the verbs (``--cfg.<field>``), in the reference system's shape."""

from __future__ import annotations

from dataclasses import dataclass, field

from mm_convert.stacks import BLOCK_MB

# a layer list: one count per stage, or nested per virtual pipeline chunk
LayerList = list[int] | list[list[int]] | None


@dataclass
class HFConfigSection:
    """The HF side.

    Args:
        hf_dir: HF model directory (config.json + *.safetensors [+ index]); for mm_to_hf, the
            original directory whose config/tokenizer/processor files are copied (optional when
            the mm dir was written by mm-convert, which keeps a copy)
    """

    hf_dir: str | None = None


@dataclass
class ParallelSection:
    """The target layout.

    Args:
        tp_size: tensor-parallel size (must divide num_key_value_heads)
        vit_pp_layers: vision layers per pipeline stage, e.g. [32,0,0,0]; nested [[..],[..]] =
            virtual pipeline chunks (chunk v of pp rank p is stage v*pp+p); default: all on stage 0
        llm_pp_layers: LLM layers per pipeline stage, e.g. [1,10,10,7]; nested likewise;
            default: all on the last stage
    """

    tp_size: int = 1
    vit_pp_layers: LayerList = None
    llm_pp_layers: LayerList = None


@dataclass
class HfToMmConfig:
    """hf_to_mm settings.

    Args:
        mm_dir: output mm directory (latest_checkpointed_iteration.txt, release/mp_rank_*)
        hf_config: the HF checkpoint to read
        parallel_config: the tp/pp layout to write
        overwrite: replace a non-empty mm_dir
        trust_remote_code: accepted for compatibility; conversion never runs model code
        block_mb: MiB of a stacked expert tensor moved at a time (GLM-4.5V; at least one expert)
    """

    mm_dir: str
    hf_config: HFConfigSection = field(default_factory=HFConfigSection)
    parallel_config: ParallelSection = field(default_factory=ParallelSection)
    overwrite: bool = False
    trust_remote_code: bool = False
    block_mb: float = BLOCK_MB


@dataclass
class MmToHfConfig:
    """mm_to_hf settings (the layout is read from the mm dir itself).

    Args:
        mm_dir: mm directory, or one of its iter_%07d / release directories
        save_hf_dir: output HF directory
        hf_config: the original HF directory (config, tokenizer, processor files)
        iteration: "release", an iteration number or iter_%07d; default: the latest
        overwrite: replace a non-empty save_hf_dir
        max_shard_size_gb: largest safetensors shard to write
        trust_remote_code: accepted for compatibility; conversion never runs model code
        block_mb: MiB of a stacked expert tensor moved at a time (GLM-4.5V; at least one expert)
    """

    mm_dir: str
    save_hf_dir: str
    hf_config: HFConfigSection = field(default_factory=HFConfigSection)
    iteration: str | None = None
    overwrite: bool = False
    max_shard_size_gb: float = 5.0
    trust_remote_code: bool = False
    block_mb: float = BLOCK_MB


@dataclass
class ResplitConfig:
    """resplit settings: mm -> mm with another tp/pp layout.

    Args:
        mm_dir: source mm directory (its layout is read from it)
        save_dir: output mm directory
        parallel_config: the new layout
        hf_config: the original HF directory, only if mm_dir has no config.json
        iteration: which saved iteration to read; default: the latest
        overwrite: replace a non-empty save_dir
        trust_remote_code: accepted for compatibility; conversion never runs model code
        block_mb: MiB of a stacked expert tensor moved at a time (GLM-4.5V; at least one expert)
    """

    mm_dir: str
    save_dir: str
    parallel_config: ParallelSection = field(default_factory=ParallelSection)
    hf_config: HFConfigSection = field(default_factory=HFConfigSection)
    iteration: str | None = None
    overwrite: bool = False
    trust_remote_code: bool = False
    block_mb: float = BLOCK_MB


@dataclass
class HfToDcpConfig:
    hf_dir: str
    save_dir: str
    overwrite: bool = False
    block_mb: float = BLOCK_MB


@dataclass
class DcpToHfConfig:
    hf_dir: str
    dcp_dir: str
    save_dir: str
    overwrite: bool = False
    max_shard_size_gb: float = 5.0
    block_mb: float = BLOCK_MB

"""The converter of a family: its rule table (``mm_core.checkpoint.table.RuleTable``) plus the verbs.

A family subclasses ``Converter`` with its table; the verbs (``hf_to_mm``, ``mm_to_hf``, ``resplit``,
``hf_to_dcp``, ``dcp_to_hf``) are methods here, so jsonargparse turns a converter class into a
command whose methods are subcommands.
"""

from __future__ import annotations

from mm_convert.config import DcpToHfConfig, HfToDcpConfig, HfToMmConfig, MmToHfConfig, ResplitConfig
from mm_convert.stacks import BLOCK_MB
from mm_core.checkpoint.table import RuleTable


class Converter(RuleTable):
    """A rule table with the mm-convert verbs."""

    # -- verbs (jsonargparse subcommands) ------------------------------------------------------------

    def hf_to_mm(self, cfg: HfToMmConfig) -> None:
        """Convert an HF checkpoint into the mm layout (tp/pp shards)."""
        from mm_convert import engine

        engine.hf_to_mm(self, cfg)

    def mm_to_hf(self, cfg: MmToHfConfig) -> None:
        """Convert an mm checkpoint (layout read from the mm dir itself) back into an HF directory."""
        from mm_convert import engine

        engine.mm_to_hf(self, cfg)

    def resplit(self, cfg: ResplitConfig) -> None:
        """Re-shard an mm checkpoint for another tp size / pipeline layout."""
        from mm_convert import engine

        engine.resplit(self, cfg)

    def hf_to_dcp(self, hf_dir: str, save_dir: str, overwrite: bool = False, trust_remote_code: bool = False,
                  block_mb: float = BLOCK_MB) -> None:
        """Write an HF checkpoint as a DCP checkpoint (``save_dir/release``) that training can load.

        Args:
            hf_dir: HF model directory (config.json + *.safetensors)
            save_dir: output directory (gets latest_checkpointed_iteration.txt and release/)
            overwrite: replace a non-empty save_dir
            trust_remote_code: accepted for compatibility; conversion never runs model code
            block_mb: MiB of a stacked expert tensor made at a time (at least one expert)
        """
        from mm_convert import engine

        engine.hf_to_dcp(self, HfToDcpConfig(hf_dir=hf_dir, save_dir=save_dir, overwrite=overwrite, block_mb=block_mb))

    def dcp_to_hf(self, hf_dir: str, dcp_dir: str, save_dir: str, overwrite: bool = False,
                  trust_remote_code: bool = False, block_mb: float = BLOCK_MB) -> None:
        """Write a DCP checkpoint (e.g. ``save/iter_0000100``) as an HF directory.

        Args:
            hf_dir: the original HF directory (config.json, tokenizer and processor files are copied)
            dcp_dir: a DCP checkpoint directory, or a save dir with latest_checkpointed_iteration.txt
            save_dir: output HF directory
            overwrite: replace a non-empty save_dir
            trust_remote_code: accepted for compatibility; conversion never runs model code
            block_mb: MiB of a stacked expert tensor read at a time (at least one expert)
        """
        from mm_convert import engine

        engine.dcp_to_hf(self, DcpToHfConfig(hf_dir=hf_dir, dcp_dir=dcp_dir, save_dir=save_dir, overwrite=overwrite,
                                             block_mb=block_mb))

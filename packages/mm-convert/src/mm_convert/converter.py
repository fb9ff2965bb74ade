"""The base class of family converters: a rule table plus the verbs, which come from the engine.

A family writes a subclass with ``depths`` (layers per pipeline module), ``rules`` (the table),
``tied`` and optionally ``check`` (constraints on the layout, named by config field). The verbs
(``hf_to_mm``, ``mm_to_hf``, ``resplit``, ``hf_to_dcp``, ``dcp_to_hf``) are methods here, so
jsonargparse turns a converter class into a command whose methods are subcommands.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from mm_convert.config import DcpToHfConfig, HfToDcpConfig, HfToMmConfig, MmToHfConfig, ResplitConfig
from mm_convert.layout import Placement
from mm_convert.rules import LAYER, Plan, Rule, expand


class Converter:
    """Family-agnostic converter; subclasses supply the model-specific table."""

    #: pipeline modules in order (the first one, the vision encoder, runs first)
    modules: tuple[str, ...] = ("vit", "llm")
    #: (other prefix, canonical prefix) pairs for HF key spellings
    hf_aliases: tuple[tuple[str, str], ...] = ()

    # -- what a family provides ----------------------------------------------------------------

    def depths(self, hf_config: Mapping[str, Any]) -> dict[str, int]:
        """Layers per pipeline module, from the HF config."""
        raise NotImplementedError

    def rules(self, hf_config: Mapping[str, Any]) -> list[Rule]:
        """The rule table for this config (ops need head counts and sizes)."""
        raise NotImplementedError

    def tied(self, hf_config: Mapping[str, Any]) -> bool:
        """Whether the output layer is the word embedding."""
        return bool(hf_config.get("tie_word_embeddings", False))

    def check(self, hf_config: Mapping[str, Any], placement: Placement) -> None:
        """Family constraints on a layout (raise ConfigError naming the config field)."""

    # -- derived ---------------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return type(self).__name__

    def placement(self, hf_config: Mapping[str, Any], tp_size: int,
                  layers: Mapping[str, Sequence | None]) -> Placement:
        p = Placement({m: d for m, d in self.depths(hf_config).items()}, layers, tp_size)
        self.check(hf_config, p)
        return p

    def plan(self, hf_config: Mapping[str, Any], placement: Placement, present_hf: set[str] | None = None) -> Plan:
        return expand(self.rules(hf_config), self.depths(hf_config), placement, tied=self.tied(hf_config),
                      present_hf=present_hf)

    def layer_prefixes(self, hf_config: Mapping[str, Any]) -> dict[str, str]:
        """module -> the mm key prefix of its layers (to infer layer counts from rank files)."""
        out: dict[str, str] = {}
        for r in self.rules(hf_config):
            if r.place == "layer" and r.module not in out:
                out[r.module] = r.mm.split(LAYER, 1)[0]
        return out

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

    def hf_to_dcp(self, hf_dir: str, save_dir: str, overwrite: bool = False, trust_remote_code: bool = False) -> None:
        """Write an HF checkpoint as a DCP checkpoint (``save_dir/release``) that training can load.

        Args:
            hf_dir: HF model directory (config.json + *.safetensors)
            save_dir: output directory (gets latest_checkpointed_iteration.txt and release/)
            overwrite: replace a non-empty save_dir
            trust_remote_code: accepted for compatibility; conversion never runs model code
        """
        from mm_convert import engine

        engine.hf_to_dcp(self, HfToDcpConfig(hf_dir=hf_dir, save_dir=save_dir, overwrite=overwrite))

    def dcp_to_hf(self, hf_dir: str, dcp_dir: str, save_dir: str, overwrite: bool = False,
                  trust_remote_code: bool = False) -> None:
        """Write a DCP checkpoint (e.g. ``save/iter_0000100``) as an HF directory.

        Args:
            hf_dir: the original HF directory (config.json, tokenizer and processor files are copied)
            dcp_dir: a DCP checkpoint directory, or a save dir with latest_checkpointed_iteration.txt
            save_dir: output HF directory
            overwrite: replace a non-empty save_dir
            trust_remote_code: accepted for compatibility; conversion never runs model code
        """
        from mm_convert import engine

        engine.dcp_to_hf(self, DcpToHfConfig(hf_dir=hf_dir, dcp_dir=dcp_dir, save_dir=save_dir, overwrite=overwrite))

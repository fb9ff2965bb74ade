"""A family's rule table: the one declaration of how each weight is named and split.

A family writes a subclass with ``depths`` (layers per pipeline module), ``rules`` (the table),
``tied`` and optionally ``check`` (constraints on the layout, named by config field). Model
loading and the engine read checkpoints through it; mm-convert's ``Converter`` adds the verbs
(``hf_to_mm`` ...) on top, and the engine derives its tensor-parallel shards from the same rules.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from mm_core.checkpoint.rules import LAYER, Plan, Rule, expand
from mm_core.layout import Placement


class RuleTable:
    """Family-agnostic base; subclasses supply the model-specific table."""

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

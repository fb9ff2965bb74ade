"""Declarative conversion rules and the plan they expand to for one model and one layout.

A family converter is a table of :class:`Rule` s. A rule names the mm tensor and the HF tensor(s)
it is made from, with ``{layer}`` standing for the layer number (global on the HF side, local to
the stage on the mm side), a :mod:`transform <mm_core.checkpoint.ops>` and a tensor-parallel split.
The plan expands the table over the model's layer counts, so the exact set of expected keys is
known before anything is read: missing and unexpected keys are reported by name up front.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from mm_core.checkpoint.errors import KeyMismatchError
from mm_core.checkpoint.ops import IDENTITY, REPLICATED, TPSplit, Transform
from mm_core.layout import Placement

LAYER = "{layer}"


@dataclass(frozen=True)
class Rule:
    """One mm tensor from one or more HF tensors.

    ``place``: ``layer`` (the templates hold ``{layer}``), ``first`` (the module's first stage)
    or ``last`` (its last stage). ``tied_to``: an HF key this tensor copies when the model ties
    its word embeddings (the output layer); it is then written only on a stage without that key's
    own tensor and dropped on the way back. ``optional``: the HF checkpoint may lack it.
    """

    mm: str
    hf: tuple[str, ...]
    module: str
    op: Transform = IDENTITY
    tp: TPSplit = REPLICATED
    place: str = "layer"
    tied_to: str | None = None
    optional: bool = False
    layers: tuple[int, int | None] | None = None  # only layers [start, stop) (e.g. MoE from first_k_dense_replace)

    def __post_init__(self) -> None:
        if isinstance(self.hf, str):
            object.__setattr__(self, "hf", (self.hf,))
        layered = LAYER in self.mm
        if layered != (self.place == "layer") or any((LAYER in h) != layered for h in self.hf):
            raise ValueError(f"rule {self.mm}: '{{layer}}' must appear in every template exactly when place='layer'")
        if len(self.hf) != self.op.arity:
            raise ValueError(f"rule {self.mm}: {type(self.op).__name__} takes {self.op.arity} HF tensor(s), "
                             f"got {len(self.hf)}")


@dataclass(frozen=True)
class Item:
    """A rule applied to one layer: where its tensors come from and go to."""

    rule: Rule
    layer: int | None
    hf_keys: tuple[str, ...]
    mm_key: str  # global numbering (DCP, errors)
    stage: int  # flattened stage
    local_key: str  # the name inside the stage's rank file
    tied_copy: bool = False  # made from the tied embedding (no HF tensor of its own)

    @property
    def tp(self) -> TPSplit:
        return self.rule.tp


@dataclass
class Plan:
    """Every tensor of one conversion, grouped by stage."""

    placement: Placement
    items: list[Item]
    tied: bool
    consumed_only: set[str] = field(default_factory=set)  # HF keys read but not converted (tied lm_head)
    tied_keys: set[str] = field(default_factory=set)  # mm keys (global and local) of tied copies: tolerated

    def hf_keys(self) -> set[str]:
        return {k for it in self.items if not it.tied_copy for k in it.hf_keys}

    def stage_items(self, stage: int) -> list[Item]:
        return [it for it in self.items if it.stage == stage]

    def by_mm_key(self) -> dict[str, Item]:
        return {it.mm_key: it for it in self.items}


def _fmt(template: str, layer: int | None) -> str:
    return template if layer is None else template.replace(LAYER, str(layer))


def expand(rules: list[Rule], depths: Mapping[str, int], placement: Placement, *, tied: bool,
           present_hf: set[str] | None = None) -> Plan:
    """Expand rules over the layers of each module and place them on stages.

    ``present_hf``: the keys the HF checkpoint holds (None when unknown, e.g. mm -> hf); decides
    which optional rules apply.
    """
    items: list[Item] = []
    consumed: set[str] = set()
    tied_keys: set[str] = set()
    for rule in rules:
        if rule.module not in depths:
            raise ValueError(f"rule {rule.mm} names module '{rule.module}'; known: {list(depths)}")
        if rule.place == "layer":
            start, stop = rule.layers or (0, None)
            layers: Iterator[int | None] = iter(range(start, depths[rule.module] if stop is None else stop))
        else:
            layers = iter([None])
        for layer in layers:
            hf_keys = tuple(_fmt(h, layer) for h in rule.hf)
            if rule.place == "layer":
                assert layer is not None
                stage, local = placement.place_layer(rule.module, layer)
            else:
                stage = placement.first_stage(rule.module) if rule.place == "first" else placement.last_stage(rule.module)
                local = None
            mm_key = _fmt(rule.mm, layer)
            local_key = _fmt(rule.mm, local)
            if rule.tied_to is not None and tied:
                consumed.update(k for k in hf_keys if present_hf is not None and k in present_hf)
                tied_keys.update((mm_key, local_key))
                source = next((it for it in items if rule.tied_to in it.hf_keys), None)
                if source is None:
                    raise ValueError(f"rule {rule.mm}: tied_to {rule.tied_to} must come from an earlier rule")
                if source.stage == stage:
                    continue  # the stage ties to its own embedding
                items.append(Item(rule, layer, (rule.tied_to,), mm_key, stage, local_key, tied_copy=True))
                continue
            if rule.optional and present_hf is not None and not all(k in present_hf for k in hf_keys):
                continue
            items.append(Item(rule, layer, hf_keys, mm_key, stage, local_key))
    return Plan(placement, items, tied, consumed, tied_keys)


def check_keys(plan: Plan, present: set[str], where: str) -> None:
    """Missing and unexpected HF keys, by name, before any output exists."""
    expected = plan.hf_keys()
    missing = sorted(expected - present)
    unexpected = sorted(present - expected - plan.consumed_only)
    if missing or unexpected:
        lines = [f"{where} does not hold the tensors this converter expects for its config.json:"]
        for title, keys in (("missing", missing), ("unexpected", unexpected)):
            if keys:
                shown = ", ".join(keys[:8]) + (f" (+{len(keys) - 8} more)" if len(keys) > 8 else "")
                lines.append(f"  {title} ({len(keys)}): {shown}")
        lines.append("  fix: check that config.json matches the weights and that the converter fits this model")
        raise KeyMismatchError("\n".join(lines))


def describe(plan: Plan) -> Iterator[dict[str, Any]]:
    for it in plan.items:
        yield {"mm": it.mm_key, "hf": list(it.hf_keys), "stage": it.stage, "tp": it.tp.describe()}

"""Row sections of a fused weight, read from the family's conversion rules.

A rule says how the mm tensor is made from HF tensors (``[q; k; v]`` interleaved per GQA group,
``[gate; up]`` concatenated, a fused HF ``[Q; K; V]`` interleaved per head). Running the rule's
transform on row ids tells, for every row of the mm weight, which section (HF tensor, or part of
a fused HF tensor) and which row of it the mm row is: adapters get one A/B pair per section, and
merge and PEFT export put each B row back where it belongs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from mm_core.checkpoint.ops import HeadInterleave, Split
from mm_core.errors import ConfigError


@dataclass(frozen=True)
class Sections:
    """``sizes``: rows of each section (the rows of its B). ``concat_of_row[c]``: the position of mm
    row ``c`` in ``[section 0; section 1; ...]`` (HF row order). ``hf_keys``: the HF weight(s): one per
    section, or one fused tensor holding all sections in order (``fused_hf``)."""

    sizes: tuple[int, ...]
    concat_of_row: torch.Tensor
    hf_keys: tuple[str, ...] = ()
    fused_hf: bool = False

    @property
    def count(self) -> int:
        return len(self.sizes)


def plain_sections(out_features: int) -> Sections:
    """One section (a model without conversion rules, or an unfused weight)."""
    return Sections((out_features,), torch.arange(out_features))


def _intra_parts(rule: Any) -> int:
    """Sections inside one HF tensor: a fused ``[Q; K; V]`` or ``[gate; up]`` (from its op or its tp split)."""
    if isinstance(rule.op, HeadInterleave):
        return 3
    if isinstance(rule.tp, Split) and rule.tp.dim == 0 and rule.tp.parts > 1:
        return rule.tp.parts
    return 1


class RuleSections:
    """Sections of every weight of a model, from its converter's rule table (whole model, tp 1)."""

    def __init__(self, converter: str | Any | None, hf_config: Mapping[str, Any]):
        self.items: dict[str, Any] = {}
        if converter is not None:
            from mm_core.checkpoint.api import get_converter

            table = get_converter(converter)
            plan = table.plan(dict(hf_config), table.placement(dict(hf_config), 1, {}))
            self.items = plan.by_mm_key()

    def of(self, weight_key: str, shape: tuple[int, int]) -> Sections:
        """Sections of the mm weight ``weight_key`` (whole-model name) of shape ``[out, in]``."""
        item = self.items.get(weight_key)
        if item is None:
            return plain_sections(shape[0])
        rule = item.rule
        if not rule.op.rows_only:
            raise ConfigError(f"lora.targets: {weight_key} is converted by {type(rule.op).__name__}, which does not "
                              "keep whole rows; it cannot take an adapter")
        out = shape[0]
        if rule.op.arity > 1:
            sizes = tuple(s[0] for s in rule.op.inverse_shapes(tuple(shape)))
            starts = [sum(sizes[:i]) for i in range(len(sizes))]
            ids = [torch.arange(n) + a for n, a in zip(sizes, starts)]
            return Sections(sizes, rule.op.forward(ids), tuple(item.hf_keys), fused_hf=False)
        parts = _intra_parts(rule)
        if out % parts:
            raise ConfigError(f"lora.targets: {weight_key} has {out} rows, not {parts} equal sections")
        concat = rule.op.forward([torch.arange(out)])
        return Sections((out // parts,) * parts, concat, tuple(item.hf_keys), fused_hf=parts > 1)

"""Rule expansion: the exact key sets, placement, layer ranges and tied copies, without a model."""

from __future__ import annotations

import pytest

from mm_core.checkpoint.ops import ROW, Concat
from mm_core.checkpoint.rules import Rule, expand
from mm_core.layout import Placement

RULES = [
    Rule("enc.first.w", ("v.embed",), "vit", place="first"),
    Rule("enc.layers.{layer}.w", ("v.{layer}.w",), "vit"),
    Rule("dec.emb", ("emb",), "llm", place="first"),
    Rule("dec.layers.{layer}.fc1", ("l.{layer}.gate", "l.{layer}.up"), "llm", op=Concat(2)),
    Rule("dec.layers.{layer}.experts", ("l.{layer}.experts",), "llm", tp=ROW, layers=(1, None)),
    Rule("dec.head", ("head",), "llm", place="last", tied_to="emb"),
]


def test_expand_places_and_renumbers():
    p = Placement({"vit": 2, "llm": 3}, {"vit": [1, 1, 0], "llm": [0, 1, 2]})
    plan = expand(RULES, {"vit": 2, "llm": 3}, p, tied=False, present_hf=None)
    where = {it.mm_key: (it.stage, it.local_key) for it in plan.items}
    assert where["enc.first.w"] == (0, "enc.first.w")
    assert where["enc.layers.1.w"] == (1, "enc.layers.0.w")
    assert where["dec.emb"] == (1, "dec.emb")
    assert where["dec.layers.2.fc1"] == (2, "dec.layers.1.fc1")
    assert "dec.layers.0.experts" not in where and where["dec.layers.1.experts"] == (2, "dec.layers.0.experts")
    assert where["dec.head"] == (2, "dec.head")
    assert plan.hf_keys() >= {"l.2.gate", "l.2.up", "head"}


def test_tied_copy_only_where_the_embedding_is_not():
    one = Placement({"vit": 2, "llm": 3}, {})
    plan = expand(RULES, {"vit": 2, "llm": 3}, one, tied=True, present_hf={"head"})
    assert "dec.head" not in {it.mm_key for it in plan.items} and plan.consumed_only == {"head"}
    two = Placement({"vit": 2, "llm": 3}, {"vit": [2, 0], "llm": [1, 2]})
    plan = expand(RULES, {"vit": 2, "llm": 3}, two, tied=True, present_hf=set())
    head = next(it for it in plan.items if it.mm_key == "dec.head")
    assert head.tied_copy and head.hf_keys == ("emb",) and head.stage == 1 and "head" not in plan.hf_keys()


def test_rule_templates_are_checked():
    with pytest.raises(ValueError, match="takes 2 HF tensor"):
        Rule("a.{layer}", ("b.{layer}",), "llm", op=Concat(2))
    with pytest.raises(ValueError, match="'{layer}' must appear"):
        Rule("a", ("b.{layer}",), "llm", place="first")

"""A Thinking model's reply is shown with its thinking apart from its answer (mm-run infer)."""

from __future__ import annotations

import pytest

from mm_core.cli.infer_thinking import answer_fields, display_text
from mm_core.data.thinking import ThinkingSplit, split_thinking, thinking_span


@pytest.mark.parametrize("reply, expected", [
    ("<think>Two shapes.</think><answer>A red square.</answer>", ThinkingSplit("Two shapes.", "A red square.")),
    ("<think>\nStep 1.\nStep 2.\n</think>\n<answer>\n42\n</answer>", ThinkingSplit("Step 1.\nStep 2.", "42")),
    ("<think>a</think>plain answer", ThinkingSplit("a", "plain answer")),
    ("opened by the template</think><answer>yes</answer>", ThinkingSplit("opened by the template", "yes")),
    ("<think>cut off by the token lim", ThinkingSplit("cut off by the token lim", "", complete=False)),
    ("<answer>only an answer</answer>", ThinkingSplit(None, "only an answer")),
    ("A plain reply, kept as is. ", ThinkingSplit(None, "A plain reply, kept as is. ")),
])
def test_split_thinking(reply, expected):
    assert split_thinking(reply) == expected


def test_thinking_span_covers_the_tags():
    reply = "<think>hm</think><answer>x</answer>"
    assert thinking_span(reply) == (0, len("<think>hm</think>"))
    assert thinking_span("pre <think>a</think> post") == (4, 4 + len("<think>a</think>"))
    assert thinking_span("a</think>b") == (0, len("a</think>"))
    assert thinking_span("<think>never closed") == (0, len("<think>never closed"))
    assert thinking_span("no tags") is None


def test_display_text_puts_thinking_in_its_own_block():
    assert display_text("<think>Look.\nCount.</think><answer>Three.</answer>") == \
        "thinking:\n  Look.\n  Count.\nanswer:\nThree."
    assert display_text("Just an answer.") == "Just an answer."
    assert "raise --max-new-tokens" in display_text("<think>still going")


def test_answer_fields_for_jsonl():
    assert answer_fields("<think>t</think><answer>a</answer>") == \
        {"answer": "a", "thinking": "t", "thinking_complete": True}
    assert answer_fields("plain") == {"answer": "plain"}

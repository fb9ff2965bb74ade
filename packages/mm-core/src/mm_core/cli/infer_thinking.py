"""How `mm-run infer` shows a Thinking model's reply: its thinking in a block of its own, then the answer.

Any model that writes ``<think>...</think>`` (GLM-4.1V-Thinking, and others) gets the same display;
``<answer>`` tags are dropped. A reply without those tags prints exactly as generated.
"""

from __future__ import annotations

from typing import Any

from mm_core.data.thinking import split_thinking

INDENT = "  "


def display_text(reply: str) -> str:
    """The text printed for ``reply``: ``thinking:`` and its lines indented, then ``answer:`` and the
    answer; an unfinished thinking (the token limit hit first) says so instead of an answer."""
    split = split_thinking(reply)
    if split.thinking is None:
        return split.answer
    lines = ["thinking:"] + [INDENT + line if line else "" for line in split.thinking.splitlines()]
    if not split.complete:
        lines.append("answer: (none: the thinking did not finish; raise --max-new-tokens)")
    else:
        lines.append("answer:")
        lines.extend(split.answer.splitlines() or [""])
    return "\n".join(lines)


def answer_fields(reply: str) -> dict[str, Any]:
    """JSONL fields of ``reply``: ``answer`` (without the thinking and the ``<answer>`` tags) and, for
    a Thinking model's reply, ``thinking`` and ``thinking_complete`` (False: cut off, the answer is empty)."""
    split = split_thinking(reply)
    if split.thinking is None:
        return {"answer": split.answer}
    return {"answer": split.answer, "thinking": split.thinking, "thinking_complete": split.complete}

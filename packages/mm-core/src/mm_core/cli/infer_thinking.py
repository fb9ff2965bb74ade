"""How `mm-run infer` shows a Thinking model's reply: its thinking in a block of its own, then the answer.

Any model that writes ``<think>...</think>`` (GLM-4.1V-Thinking, and others) gets the same display;
``<answer>`` tags are dropped. A reply without those tags prints exactly as generated.
"""

from __future__ import annotations

from typing import Any

from mm_core.data.thinking import ANSWER_CLOSE, ANSWER_OPEN, THINK_CLOSE, THINK_OPEN, split_thinking

INDENT = "  "
TAGS = (THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE)


def decode_reply(tokenizer: Any, token_ids: list[int]) -> str:
    """The reply as text without special tokens, but with the reasoning tags even where a tokenizer
    has them as special tokens (``skip_special_tokens`` would drop them, and the split with them)."""
    special = set(getattr(tokenizer, "all_special_ids", ()))
    tag_ids = {tokenizer.convert_tokens_to_ids(t): t for t in TAGS}  # an unknown tag may map to <unk>
    kept = {i: t for i, t in tag_ids.items() if i in special and tokenizer.convert_ids_to_tokens(i) == t}
    if not kept or not any(i in kept for i in token_ids):
        return tokenizer.decode(token_ids, skip_special_tokens=True)
    parts, run = [], []
    for i in token_ids:
        if i in kept:
            parts += [tokenizer.decode(run, skip_special_tokens=True), kept[i]]
            run = []
        else:
            run.append(i)
    return "".join(parts + [tokenizer.decode(run, skip_special_tokens=True)])


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

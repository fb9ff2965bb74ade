"""Reasoning ("Thinking") replies: ``<think>...</think>`` then the answer, often as ``<answer>...</answer>``.

One parser for both directions, so training and inference agree on what the thinking part is:
a formatter asks :func:`thinking_span` which characters of a reply to leave out of the loss
(``basic_parameters.train_on_thinking: false``), and ``mm-run infer`` shows a generated reply's
thinking apart from its answer (:func:`split_thinking`). The tags are plain text here; whether a
tokenizer has them as single tokens does not matter.
"""

from __future__ import annotations

from dataclasses import dataclass

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"


def thinking_span(reply: str) -> tuple[int, int] | None:
    """Character span of the thinking part of ``reply``, tags included: from ``<think>`` (or from
    the start when the reply only closes it, the template having opened it) through ``</think>``;
    an unclosed ``<think>`` runs to the end. None when the reply has no thinking part."""
    close = reply.find(THINK_CLOSE)
    open_ = reply.find(THINK_OPEN)
    if open_ >= 0 and (close < 0 or open_ < close):
        end = reply.find(THINK_CLOSE, open_)
        return open_, (end + len(THINK_CLOSE)) if end >= 0 else len(reply)
    if close >= 0:
        return 0, close + len(THINK_CLOSE)
    return None


@dataclass(frozen=True)
class ThinkingSplit:
    """A generated reply cut into its thinking and its answer (``thinking`` None: none was written)."""

    thinking: str | None
    answer: str
    complete: bool = True  # False: the thinking was cut off (no ``</think>``), so there is no answer yet


def _strip_answer_tags(text: str) -> str:
    """The answer without its ``<answer>`` wrapper (a missing closing tag is tolerated)."""
    start = text.find(ANSWER_OPEN)
    if start < 0:
        return text.replace(ANSWER_CLOSE, "")
    inner = text[start + len(ANSWER_OPEN):]
    end = inner.find(ANSWER_CLOSE)
    return (text[:start] + (inner if end < 0 else inner[:end] + inner[end + len(ANSWER_CLOSE):])).strip()


def split_thinking(text: str) -> ThinkingSplit:
    """Thinking and answer of a generated reply; a reply without any of the tags is returned as is."""
    span = thinking_span(text)
    if span is None:
        if ANSWER_OPEN in text or ANSWER_CLOSE in text:
            return ThinkingSplit(None, _strip_answer_tags(text).strip())
        return ThinkingSplit(None, text)
    start, end = span
    inner = text[start:end]
    closed = inner.endswith(THINK_CLOSE)
    if inner.startswith(THINK_OPEN):
        inner = inner[len(THINK_OPEN):]
    if closed:
        inner = inner[:-len(THINK_CLOSE)]
    answer = _strip_answer_tags(text[:start] + text[end:]).strip()
    return ThinkingSplit(inner.strip(), answer, complete=closed)

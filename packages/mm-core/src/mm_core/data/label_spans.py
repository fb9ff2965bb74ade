"""Labels by character span: tokenise a whole conversation once and label the tokens of the replies.

A formatter writes the conversation text as the family's chat template does and notes which
character spans carry a loss (the assistant replies, their end-of-turn marker). Tokenising the text
in one call, exactly as the HF processor does, gives the processor's ids; a token is a label when
its first character lies in a span, so no token boundary can differ from the processor's.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

from mm_core.batch import IGNORE_INDEX

Span = tuple[int, int]  # [start, end) character offsets


def merge_spans(spans: Sequence[Span]) -> list[Span]:
    """Sorted, non-overlapping, non-empty spans covering the same characters."""
    out: list[Span] = []
    for start, end in sorted(s for s in spans if s[1] > s[0]):
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


def subtract_span(spans: Sequence[Span], cut: Span) -> list[Span]:
    """``spans`` without the characters of ``cut``."""
    out: list[Span] = []
    for start, end in spans:
        if end <= cut[0] or start >= cut[1]:
            out.append((start, end))
            continue
        if start < cut[0]:
            out.append((start, cut[0]))
        if end > cut[1]:
            out.append((cut[1], end))
    return out


def tokenize_with_labels(tokenizer: Any, text: str, spans: Sequence[Span],
                         never_label: Collection[int] = ()) -> tuple[list[int], list[int]]:
    """``(input_ids, labels)`` of ``text``: a token's label is its id when the token starts inside one
    of ``spans``, else ``IGNORE_INDEX``; ids in ``never_label`` (vision placeholders) get none."""
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids: list[int] = list(enc["input_ids"])
    merged = merge_spans(spans)
    labels: list[int] = []
    i = 0
    for tok, (start, _end) in zip(ids, enc["offset_mapping"]):
        while i < len(merged) and start >= merged[i][1]:
            i += 1
        inside = i < len(merged) and merged[i][0] <= start
        labels.append(tok if inside and tok not in never_label else IGNORE_INDEX)
    return ids, labels

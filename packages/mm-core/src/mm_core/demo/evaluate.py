"""Exact-match accuracy of `mm-run infer`'s answers on the demo's held-out questions."""

from __future__ import annotations

import json
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mm_core.demo.data import QUESTIONS


def normalise(answer: str) -> str:
    """Case, surrounding spaces and trailing punctuation do not count against an answer."""
    return answer.strip().strip(string.punctuation + " ").lower()


@dataclass
class Accuracy:
    """Exact-match accuracy overall and per question kind."""

    correct: int
    total: int
    per_kind: dict[str, float] = field(default_factory=dict)
    examples: list[dict[str, str]] = field(default_factory=list)  # a few (question, expected, answer)

    @property
    def value(self) -> float:
        return self.correct / self.total if self.total else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"accuracy": self.value, "correct": self.correct, "total": self.total, "per_kind": self.per_kind,
                "examples": self.examples}


def read_answers(path: str | Path) -> list[dict[str, Any]]:
    """The JSONL records `mm-run infer --output` wrote (the input record plus ``answer``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: `mm-run infer` wrote no answers file")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def score(records: list[dict[str, Any]], *, n_examples: int = 6) -> Accuracy:
    """Compare each record's ``answer`` with its ``expected`` word."""
    if not records:
        raise ValueError("no answers to score")
    hits: dict[str, list[int]] = {k: [0, 0] for k in QUESTIONS}
    examples = []
    for r in records:
        if "expected" not in r or "answer" not in r:
            raise ValueError(f"record without 'expected'/'answer': {sorted(r)}")
        ok = normalise(r["answer"]) == normalise(r["expected"])
        kind = r.get("kind", "shape")
        hits.setdefault(kind, [0, 0])
        hits[kind][0] += int(ok)
        hits[kind][1] += 1
        if len(examples) < n_examples:
            examples.append({"question": r["prompt"], "image": Path(r["images"][0]).name if r.get("images") else "",
                             "expected": r["expected"], "answer": r["answer"]})
    per_kind = {k: c / n for k, (c, n) in hits.items() if n}
    correct = sum(c for c, _ in hits.values())
    return Accuracy(correct, len(records), per_kind, examples)

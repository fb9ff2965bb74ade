"""Bad records: skipped and counted by reason, or (``strict``) the first one is an error.

A long run must not die on one broken line in a 150k-record file, but the user must learn what
was dropped: every skip is logged with file and line and the counts are summarised per epoch.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field

from mm_core.errors import MMError

logger = logging.getLogger("mm.data")

REASONS = (
    "malformed_json",  # the line / item is not a JSON object
    "bad_format",  # no messages list, unknown role, empty content ...
    "no_assistant",  # no assistant turn to learn from
    "placeholder_mismatch",  # number of <image>/<video> differs from the media list
    "missing_media",  # an image or video file does not exist
    "unreadable_media",  # it exists but cannot be decoded
    "too_long",  # the formatted sample is longer than the sequence length
)
_LOGGED_PER_REASON = 20


class BadRecord(Exception):
    """One record that cannot be trained on; ``where`` is ``file:line`` (JSONL) or ``file[index]``."""

    def __init__(self, reason: str, where: str, detail: str):
        assert reason in REASONS, reason
        super().__init__(f"{where}: {reason}: {detail}")
        self.reason, self.where, self.detail = reason, where, detail


class DataError(MMError):
    """A bad record in ``strict`` mode, or data that cannot be read at all."""


@dataclass
class BadRecordStats:
    """Counts by reason (plus a few examples each), mergeable across workers and ranks."""

    counts: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)
    log: bool = True  # log each skip (the first few per reason)

    def add(self, bad: BadRecord, *, strict: bool = False) -> None:
        if strict:
            raise DataError(f"bad record at {bad.where} ({bad.reason}): {bad.detail}. "
                            "Fix or remove the record, or set basic_parameters.strict=false to skip bad records.")
        self.counts[bad.reason] += 1
        ex = self.examples.setdefault(bad.reason, [])
        if len(ex) < 5:
            ex.append(str(bad))
        if self.log and self.counts[bad.reason] <= _LOGGED_PER_REASON:
            logger.warning("skipping bad record %s", bad)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> str:
        if not self.counts:
            return "no bad records"
        parts = ", ".join(f"{r}={self.counts[r]}" for r in REASONS if self.counts[r])
        return f"{self.total} bad records skipped ({parts})"

    def state_dict(self) -> dict:
        return {"counts": dict(self.counts), "examples": {k: list(v) for k, v in self.examples.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.counts = Counter(state.get("counts", {}))
        self.examples = {k: list(v) for k, v in state.get("examples", {}).items()}

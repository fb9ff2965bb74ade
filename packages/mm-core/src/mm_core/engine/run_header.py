"""The first record a run writes to its metrics file, so that runs appended to one file stay apart.

Several runs (a first one, its resumptions, a rerun with other settings) may append to the same
``metrics.jsonl``; the header says which run the step records below it belong to, which config
produced them and whether the run picked up from a checkpoint.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HEADER = "run_header"  # value of the "record" key that marks a header (step records have "step" instead)


def config_hash(cfg: Any) -> str:
    """A short digest of the config's values: equal configs give equal hashes, across processes and hosts."""
    text = json.dumps(dataclasses.asdict(cfg), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def run_header(cfg: Any, world_size: int, start_step: int, resumed_from: str | Path | None) -> dict[str, Any]:
    """The header record of one run (``resumed_from``: the checkpoint directory it loaded, else None)."""
    return {"record": HEADER, "run_id": uuid.uuid4().hex[:12], "config_hash": config_hash(cfg),
            "world_size": world_size, "start_time": datetime.now(UTC).isoformat(timespec="seconds"),
            "start_step": start_step, "resumed_from": str(resumed_from) if resumed_from is not None else None}


def is_step_record(record: dict[str, Any]) -> bool:
    """True for a step record (what readers of the metrics file plot and average), False for a header."""
    return record.get("record") != HEADER and "step" in record

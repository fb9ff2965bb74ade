"""How many samples an optimizer step holds, said up front when packing makes it differ from
``training.global_batch_size``: packed rows hold several samples, and a user comparing runs (or
tools) per step must know that a step with packing is more work than one without.
"""

from __future__ import annotations

from typing import Any

from mm_core.engine.config import FinetuneConfig


def samples_summary(data: Any, cfg: FinetuneConfig) -> dict[str, Any] | None:
    """Samples per optimizer step for the header record; None when they are ``global_batch_size``."""
    loader = getattr(data, "loader", None)
    if loader is None or not loader.packing:
        return None
    gbs = cfg.training.global_batch_size
    if loader.fixed_samples:
        return {"packing_samples": "fixed", "samples_per_step": gbs}
    counts = loader.samples_per_step(0)
    summary: dict[str, Any] = {"packing_samples": "fill", "rows_per_step": gbs}
    if counts:  # map-style: the plan of the first epoch is known
        summary |= {"samples_per_step_mean": round(sum(counts) / len(counts), 2),
                    "samples_per_step_min": min(counts), "samples_per_step_max": max(counts)}
    return summary


def samples_note(summary: dict[str, Any] | None) -> str | None:
    """The console line for a summary (None: nothing to say)."""
    if summary is None:
        return None
    if summary["packing_samples"] == "fixed":
        return (f"packing: {summary['samples_per_step']} samples per optimizer step as without packing "
                f"(basic_parameters.packing_samples fixed), packed into as few rows as they fit")
    rows = summary["rows_per_step"]
    if "samples_per_step_mean" in summary:
        held = (f"hold {summary['samples_per_step_mean']:g} samples on average "
                f"({summary['samples_per_step_min']}-{summary['samples_per_step_max']})")
    else:
        held = "hold a varying number of samples (streaming: each step's record has its count)"
    return (f"packing: the {rows} rows of an optimizer step (training.global_batch_size) {held}, "
            f"not {rows}; set basic_parameters.packing_samples fixed to keep {rows} samples per step")

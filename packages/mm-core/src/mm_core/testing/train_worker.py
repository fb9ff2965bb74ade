"""Train a few steps on fixed micro-batches with the engine and record losses and weights.

Run in process (``run_all(job)``: the one-process reference) or under torchrun, several layouts
in one launch (``python -m torch.distributed.run --nproc-per-node 2 -m mm_core.testing.train_worker
JOB.json``), because starting gloo process groups is what costs time on a small machine.
``JOB.json``: ``{"batches": file of torch.save'd micro-batches, "runs": {name: finetune yaml},
"out": directory}``; each run writes ``<out>/<name>/records.json`` (rank 0) and its checkpoint.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch


class FixedWindows:
    """The engine's data source for the suite: every step sees the same global batch, micro-batch
    ``i`` being sample ``i``, split over data-parallel ranks in order."""

    def __init__(self, samples: list[dict[str, torch.Tensor]], dp: int, dp_rank: int):
        per_rank = len(samples) // dp
        self.mine = samples[dp_rank * per_rank:(dp_rank + 1) * per_rank]
        self.global_size = len(samples)
        self.consumed = 0

    def next_window(self) -> list[dict[str, torch.Tensor]]:
        self.consumed += self.global_size
        return [dict(b) for b in self.mine]

    def steps_per_epoch(self) -> int:
        return 1

    def state_dict(self) -> dict[str, Any]:
        return {"consumed_samples": self.consumed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.consumed = int(state["consumed_samples"])


def run_one(config_file: str, samples: list[dict[str, torch.Tensor]], out: Path) -> list[dict[str, Any]]:
    from mm_core.engine.config import parse_finetune_config
    from mm_core.engine.trainer import Trainer

    trainer = Trainer(parse_finetune_config(["--config", config_file]))
    trainer.data = FixedWindows(samples, trainer.layout.dp, trainer.par.dp_rank)
    records = trainer.train()
    if trainer.par.rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        (out / "records.json").write_text(json.dumps([{"loss": r["loss"], "grad_norm": r["grad_norm"]}
                                                      for r in records]))
    return records


def run_all(job_file: str | Path) -> None:
    from mm_core.engine.trainer import shutdown

    torch.set_num_threads(1)
    job = json.loads(Path(job_file).read_text())
    samples = torch.load(job["batches"], weights_only=True)
    try:
        for name, config_file in job["runs"].items():
            run_one(config_file, samples, Path(job["out"]) / name)
    finally:
        shutdown()


if __name__ == "__main__":
    run_all(sys.argv[1])

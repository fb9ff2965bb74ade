"""Train a few steps on fixed micro-batches with the engine and record losses and weights.

Run in process (``run_all(job)``: the one-process reference) or under torchrun, several layouts
in one launch (``python -m torch.distributed.run --nproc-per-node 2 -m mm_core.testing.train_worker
JOB.json``), because starting gloo process groups is what costs time on a small machine.
``JOB.json``: ``{"batches": file of torch.save'd micro-batches, "runs": {name: finetune yaml},
"out": directory, "tp_shards": HF dir (optional)}``; each run writes ``<out>/<name>/records.json``
(rank 0) and its checkpoint; ``tp_shards`` compares, on every rank of a tp group over the whole
world, the engine's derived shards with the converter's (``<out>/tp_shards/rank<r>.json``).
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
    from unittest import mock

    from mm_core.engine import trainer as trainer_module
    from mm_core.engine.config import parse_finetune_config

    def fixed_data(cfg: Any, layout: Any, dp_rank: int, hf_config: Any) -> FixedWindows:
        return FixedWindows(samples, layout.dp, dp_rank)

    # the engine has no data-source hook; its own sources (synthetic, the data pipeline) assume a
    # family's processor layout, so the suite hands the trainer the family's own micro-batches
    with mock.patch.object(trainer_module, "build_data", fixed_data):
        trainer = trainer_module.Trainer(parse_finetune_config(["--config", config_file]))
    records = trainer.train()
    if trainer.par.rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        keep = ("loss", "grad_norm", "tokens_per_expert")  # the last: MoE models only
        (out / "records.json").write_text(json.dumps([{k: r[k] for k in keep if k in r} for r in records]))
    return records


def compare_tp_shards(hf_dir: str, out: Path) -> None:
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    from mm_core.testing.tp_shards import tp_shard_mismatches

    world, rank = dist.get_world_size(), dist.get_rank()
    bad = tp_shard_mismatches(hf_dir, world, rank, init_device_mesh("cpu", (world,)))
    out.mkdir(parents=True, exist_ok=True)
    (out / f"rank{rank}.json").write_text(json.dumps(bad))


def run_all(job_file: str | Path) -> None:
    from mm_core.engine.trainer import shutdown

    torch.set_num_threads(1)
    job = json.loads(Path(job_file).read_text())
    samples = torch.load(job["batches"], weights_only=True)
    finished = False
    try:
        for name, config_file in job["runs"].items():
            run_one(config_file, samples, Path(job["out"]) / name)
        if job.get("tp_shards"):
            compare_tp_shards(job["tp_shards"], Path(job["out"]) / "tp_shards")
        finished = True
    finally:
        shutdown(finished)


if __name__ == "__main__":
    run_all(sys.argv[1])

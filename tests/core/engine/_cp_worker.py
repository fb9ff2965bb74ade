"""Several layouts, each with its own model and micro-batches, in one launch (context parallel checks).

``python -m torch.distributed.run --nproc-per-node N _cp_worker.py JOB.json``; ``JOB.json``:
``{"out": dir, "runs": {name: {"config": finetune yaml, "batches": torch.save'd micro-batches}}}``.
Each run trains through ``mm_core.testing.train_worker.run_one`` (records + checkpoint under
``<out>/<name>``); the process group is started once and shared by all runs.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch


def run_job(job_file: str | Path) -> None:
    from mm_core.engine.trainer import shutdown
    from mm_core.testing.train_worker import run_one

    torch.set_num_threads(1)
    job = json.loads(Path(job_file).read_text())
    finished = False
    try:
        for name, run in job["runs"].items():
            samples = torch.load(run["batches"], weights_only=True)
            run_one(run["config"], samples, Path(job["out"]) / name)
        finished = True
    finally:
        shutdown(finished)


if __name__ == "__main__":
    run_job(sys.argv[1])

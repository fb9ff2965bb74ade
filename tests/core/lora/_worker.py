"""One launch, several LoRA runs: ``python -m torch.distributed.run --nproc-per-node 2 _worker.py JOB.json``.

``JOB.json``: ``{"out": dir, "runs": {name: {"config": yaml, "batches": file or null}}}``. A run
without batches goes through the engine tests' worker (synthetic data; weights dumped per rank);
one with batches trains on those fixed micro-batches (``mm_core.testing.train_worker``: families
whose inputs the synthetic source cannot make) and compares through its checkpoint.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import torch


def _engine_worker():
    spec = importlib.util.spec_from_file_location(
        "engine_test_worker", Path(__file__).parents[1] / "engine" / "_worker.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def run_job(job_file: str) -> None:
    from mm_core.engine.trainer import shutdown
    from mm_core.testing.train_worker import run_one

    torch.set_num_threads(1)
    job = json.loads(Path(job_file).read_text())
    out = Path(job["out"])
    engine = _engine_worker()
    finished = False
    try:
        for name, run in job["runs"].items():
            if run.get("batches"):
                run_one(run["config"], torch.load(run["batches"], weights_only=True), out / name)
            else:
                engine.run(["--config", run["config"]], out / name, keep_group=True)
        finished = True
    finally:
        shutdown(finished)


if __name__ == "__main__":
    run_job(sys.argv[1])

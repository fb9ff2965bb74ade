"""Several training runs and tp shard comparisons in ONE launch (``torchrun ... tp_worker.py JOB.json``).

``JOB.json``: ``{"batches": {run: file of micro-batches}, "runs": {run: finetune yaml}, "out": dir,
"tp_shards": {name: HF dir}}``. Runs differ in model, so each has its own micro-batches; the rest is
mm_core.testing.train_worker's (records, checkpoints, the engine-vs-converter shard comparison).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch


def main(job_file: str) -> None:
    from mm_core.engine.trainer import shutdown
    from mm_core.testing.train_worker import compare_tp_shards, run_one

    torch.set_num_threads(1)
    job = json.loads(Path(job_file).read_text())
    out = Path(job["out"])
    finished = False
    try:
        for name, config_file in job["runs"].items():
            run_one(config_file, torch.load(job["batches"][name], weights_only=True), out / name)
        for name, hf_dir in job.get("tp_shards", {}).items():
            compare_tp_shards(hf_dir, out / "tp_shards" / name)
        finished = True
    finally:
        shutdown(finished)


if __name__ == "__main__":
    main(sys.argv[1])

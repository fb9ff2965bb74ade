"""Several `mm-run infer` runs in ONE launch (``torchrun ... infer_tp_worker.py JOB.json``).

``JOB.json``: ``{"runs": {name: [mm-run infer arguments]}, "out": dir}``. Each run is
``mm_core.cli.infer.main`` in every worker (the process group is made once and reused); rank 0 writes
``<out>/<name>.rc`` with the run's exit status.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch


def main(job_file: str) -> None:
    import torch.distributed as dist

    from mm_core.cli.infer import main as infer

    torch.set_num_threads(1)
    job = json.loads(Path(job_file).read_text())
    out = Path(job["out"])
    try:
        for name, argv in job["runs"].items():
            rc = infer(argv)
            if dist.get_rank() == 0:
                (out / f"{name}.rc").write_text(str(rc))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])

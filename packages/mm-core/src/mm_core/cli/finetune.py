"""`mm-run finetune`: check the config, then train in this process or launch the workers.

``--nproc-per-node N`` (and the usual ``--nnodes/--node-rank/--master-addr/--master-port``)
starts the workers with torch's elastic launcher, which stops every worker and reports the
error when one dies. Everything else is the finetune config (``--config f.yaml`` and
``--section.field value``), validated, together with the parallel layout against the world
size, before any worker starts. ``torchrun -m mm_core.engine.finetune ...`` works too.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from mm_core.cli.launcher import launch as launch_workers
from mm_core.cli.launcher import split_launcher_args, wants_workers, world_size
from mm_core.errors import MMError

WORKER_MODULE = "mm_core.engine.finetune"
PROG = "mm-run finetune"


def main(argv: Sequence[str]) -> int:
    argv = list(argv)
    if any(a in ("-h", "--help") for a in argv):
        from mm_core.cli.finetune_help import print_help

        print("launcher: [--nproc-per-node N] [--nnodes N --node-rank R --master-addr A --master-port P]\n")
        print_help(split_launcher_args(argv, PROG)[1])  # with the values the plugins make valid
        return 0
    launch, rest = split_launcher_args(argv, PROG)
    try:
        from mm_core.engine.config import parse_finetune_config, validate

        cfg = parse_finetune_config(rest)
        validate(cfg, world_size(launch))
    except MMError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not wants_workers(launch):
        from mm_core.engine.finetune import main as worker_main

        return worker_main(rest)
    rc = launch_workers(WORKER_MODULE, rest, launch)
    if rc:  # the failing worker already printed its error
        print("error: training failed (the failing worker's error is above)", file=sys.stderr)
    return rc

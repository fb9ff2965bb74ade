"""`mm-run finetune`: check the config, then train in this process or launch the workers.

``--nproc-per-node N`` (and the usual ``--nnodes/--node-rank/--master-addr/--master-port``)
starts the workers with torch's elastic launcher, which stops every worker and reports the
error when one dies. Everything else is the finetune config (``--config f.yaml`` and
``--section.field value``), validated, together with the parallel layout against the world
size, before any worker starts. ``torchrun -m mm_core.engine.finetune ...`` works too.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from mm_core.errors import MMError

WORKER_MODULE = "mm_core.engine.finetune"


def _launcher_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mm-run finetune", add_help=False)
    p.add_argument("--nproc-per-node", "--nproc_per_node", dest="nproc", type=int, default=None)
    p.add_argument("--nnodes", type=int, default=1)
    p.add_argument("--node-rank", "--node_rank", dest="node_rank", type=int, default=0)
    p.add_argument("--master-addr", "--master_addr", dest="master_addr", default=None)
    p.add_argument("--master-port", "--master_port", dest="master_port", type=int, default=None)
    return p


def main(argv: Sequence[str]) -> int:
    argv = list(argv)
    if any(a in ("-h", "--help") for a in argv):
        from mm_core.cli.finetune_help import print_help

        print("launcher: [--nproc-per-node N] [--nnodes N --node-rank R --master-addr A --master-port P]\n")
        print_help(_launcher_parser().parse_known_args(argv)[1])  # with the values the plugins make valid
        return 0
    launch, rest = _launcher_parser().parse_known_args(argv)
    try:
        from mm_core.engine.config import parse_finetune_config, validate

        cfg = parse_finetune_config(rest)
        world = launch.nnodes * (launch.nproc or 1)
        validate(cfg, world)
    except MMError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if launch.nproc is None and launch.nnodes == 1:
        from mm_core.engine.finetune import main as worker_main

        return worker_main(rest)
    from torch.distributed import run as torchrun

    args = ["--nproc-per-node", str(launch.nproc or 1), "--max-restarts", "0"]
    if launch.nnodes == 1 and launch.master_addr is None and launch.master_port is None:
        args += ["--standalone"]  # one node: a free local port, no rendezvous setup
    else:
        args += ["--nnodes", str(launch.nnodes), "--node-rank", str(launch.node_rank),
                 "--master-addr", launch.master_addr or "127.0.0.1", "--master-port", str(launch.master_port or 29500)]
    args += ["-m", WORKER_MODULE, *rest]
    try:
        torchrun.main(args)
    except Exception as e:  # ChildFailedError: the launcher already printed the worker's error
        print(f"error: training failed: {type(e).__name__}", file=sys.stderr)
        return 1
    return 0

"""Start an `mm-run` subcommand's worker processes with torch's elastic launcher (torchrun).

``--nproc-per-node N`` (and ``--nnodes/--node-rank/--master-addr/--master-port`` for several
machines) are the launcher's options, shared by `mm-run finetune` and `mm-run infer`: the
subcommand checks its arguments first, then :func:`launch` starts the workers with the remaining
arguments. The launcher stops every worker when one dies and reports which one.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence


def add_launcher_arguments(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    p.add_argument("--nproc-per-node", "--nproc_per_node", dest="nproc", type=int, default=None,
                   help="start this many worker processes on this machine (torchrun)")
    p.add_argument("--nnodes", type=int, default=1, help="machines taking part (several: give --node-rank, "
                                                          "--master-addr, --master-port)")
    p.add_argument("--node-rank", "--node_rank", dest="node_rank", type=int, default=0)
    p.add_argument("--master-addr", "--master_addr", dest="master_addr", default=None)
    p.add_argument("--master-port", "--master_port", dest="master_port", type=int, default=None)


def launcher_parser(prog: str) -> argparse.ArgumentParser:
    """Only the launcher's options (``parse_known_args`` leaves the subcommand's own arguments)."""
    p = argparse.ArgumentParser(prog=prog, add_help=False)
    add_launcher_arguments(p)
    return p


def split_launcher_args(argv: Sequence[str], prog: str) -> tuple[argparse.Namespace, list[str]]:
    """``(launcher options, the rest)``: the rest is what every worker is started with."""
    launch, rest = launcher_parser(prog).parse_known_args(list(argv))
    return launch, rest


def world_size(launch: argparse.Namespace) -> int:
    return launch.nnodes * (launch.nproc or 1)


def wants_workers(launch: argparse.Namespace) -> bool:
    """True when the options ask for worker processes (else the subcommand runs in this process)."""
    return launch.nproc is not None or launch.nnodes != 1


def torchrun_args(module: str, rest: Sequence[str], launch: argparse.Namespace) -> list[str]:
    """torchrun's command line for ``python -m module *rest`` on every worker."""
    args = ["--nproc-per-node", str(launch.nproc or 1), "--max-restarts", "0"]
    if launch.nnodes == 1 and launch.master_addr is None and launch.master_port is None:
        args += ["--standalone"]  # one node: a free local port, no rendezvous setup
    else:
        args += ["--nnodes", str(launch.nnodes), "--node-rank", str(launch.node_rank),
                 "--master-addr", launch.master_addr or "127.0.0.1", "--master-port", str(launch.master_port or 29500)]
    return [*args, "-m", module, *rest]


def launch(module: str, rest: Sequence[str], launch: argparse.Namespace) -> int:
    """Run the workers to the end; returns 0, or the exit status of the first worker that failed
    (each worker prints its own errors; the launcher logs which rank failed)."""
    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    try:
        torchrun.run(torchrun.parse_args(torchrun_args(module, rest, launch)))
    except ChildFailedError as e:
        codes = [f.exitcode for _, f in sorted(e.failures.items())]
        return next((c for c in codes if c > 0), 1)
    return 0

"""Atomic output directories and progress with throughput."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tqdm import tqdm

from mm_core.checkpoint.errors import TargetExistsError


def check_target(target: str | Path, overwrite: bool, flag: str) -> Path:
    """Refuse a non-empty target unless overwriting (before any work is done)."""
    t = Path(target)
    if t.exists() and not t.is_dir():
        raise TargetExistsError(f"{t} exists and is not a directory")
    if t.is_dir() and any(t.iterdir()) and not overwrite:
        raise TargetExistsError(f"{t} exists and is not empty; choose another directory or pass {flag} true")
    return t


@contextmanager
def atomic_dir(target: str | Path, overwrite: bool, flag: str = "--cfg.overwrite") -> Iterator[Path]:
    """Yield a temporary directory beside ``target``, renamed into place only on success.

    An interrupted or failed conversion leaves no directory at ``target`` (only the hidden
    partial one, which is removed on errors and never looks like a checkpoint).
    """
    t = check_target(target, overwrite, flag)
    t.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(t)
    tmp = t.parent / f".{t.name}.partial-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if t.exists():
        old = t.parent / f".{t.name}.old-{os.getpid()}"
        os.replace(t, old)
        os.replace(tmp, t)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, t)


def _remove_stale(t: Path) -> None:
    """Partial directories of killed runs (their process is gone) beside ``t``."""
    for p in t.parent.glob(f".{t.name}.partial-*"):
        pid = p.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(p, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Progress:
    """A tqdm bar in bytes (with throughput) that also reports the final figures."""

    def __init__(self, total: int, desc: str, enabled: bool = True):
        self.bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc,
                        disable=not enabled, dynamic_ncols=True, mininterval=0.5)
        self.start = time.perf_counter()
        self.done = 0

    def update(self, n: int) -> None:
        self.done += n
        self.bar.update(n)

    def close(self) -> float:
        self.bar.close()
        return time.perf_counter() - self.start

"""Host memory of this process while a block runs: resident set size sampled every 2 ms, for the
benchmarks that report memory per rank (``ru_maxrss`` alone cannot tell growth within one step)."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass


def rss_gb() -> float:
    """This process's resident set size now, in GiB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**30


@dataclass
class Window:
    before: float  # RSS when the block started
    peak: float  # highest RSS seen until it ended (a last sample included)


@contextlib.contextmanager
def sampled_rss() -> Iterator[Window]:
    """``with sampled_rss() as w: ...``: ``w.before`` and ``w.peak`` of the block, in GiB."""
    window = Window(rss_gb(), rss_gb())
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.002):
            window.peak = max(window.peak, rss_gb())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield window
    finally:
        done.set()
        sampler.join()
        window.peak = max(window.peak, rss_gb())

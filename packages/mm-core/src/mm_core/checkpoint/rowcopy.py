"""File-to-file copies for ops that only move whole rows of dim 0.

Most tensors of a conversion are renamed, concatenated or interleaved along dim 0 and split by
rows (column-parallel) or replicated. For those, running the op on a 1-D tensor of *row ids*
(``key << 40 | row``) yields which source rows form each output, as runs of consecutive rows;
the bytes then go from file to file with ``os.copy_file_range`` (in the kernel, like ``cp``) or
straight into a preallocated tensor, without reading whole tensors into Python memory.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

_SHIFT = 40
_MASK = (1 << _SHIFT) - 1


@dataclass(frozen=True)
class RowSource:
    """Where the rows of one stored tensor live: file, absolute offset, bytes per row."""

    path: Path
    start: int
    rows: int
    row_bytes: int


def row_ids(index: int, rows: int) -> torch.Tensor:
    return torch.arange(rows, dtype=torch.int64) + (index << _SHIFT)


def segments(ids: torch.Tensor, refs: Sequence[RowSource]) -> list[tuple[Path, int, int]]:
    """``(path, offset, nbytes)`` runs that, concatenated, give the rows ``ids``."""
    n = ids.numel()
    if n == 0:
        return []
    brk = (torch.nonzero(ids[1:] != ids[:-1] + 1).flatten() + 1).tolist()
    starts, ends = [0, *brk], [*brk, n]
    out = []
    firsts = ids[starts].tolist()
    for first, s, e in zip(firsts, starts, ends):
        ref = refs[first >> _SHIFT]
        out.append((ref.path, ref.start + (first & _MASK) * ref.row_bytes, (e - s) * ref.row_bytes))
    return out


class FdCache:
    """Open read-only descriptors, one per source file."""

    def __init__(self) -> None:
        self._fds: dict[Path, int] = {}

    def fd(self, path: Path) -> int:
        if path not in self._fds:
            self._fds[path] = os.open(path, os.O_RDONLY)
        return self._fds[path]

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()


_NO_KERNEL_COPY = False


def copy_segments(segs: Sequence[tuple[Path, int, int]], dst_fd: int, dst_offset: int, fds: FdCache) -> int:
    """Copy runs to ``dst_fd`` from ``dst_offset`` on; kernel copy where the OS allows it."""
    global _NO_KERNEL_COPY
    pos = dst_offset
    for path, off, n in segs:
        src = fds.fd(path)
        done = 0
        while done < n:
            if not _NO_KERNEL_COPY:
                try:
                    k = os.copy_file_range(src, dst_fd, n - done, off + done, pos + done)
                except OSError:  # other file systems, old kernels: fall back to read/write
                    _NO_KERNEL_COPY = True
                    continue
                if k == 0:
                    raise OSError(f"{path}: file ends before offset {off + done + n} (truncated?)")
            else:
                chunk = os.pread(src, min(n - done, 64 << 20), off + done)
                if not chunk:
                    raise OSError(f"{path}: file ends before offset {off + done + n} (truncated?)")
                k = os.pwrite(dst_fd, chunk, pos + done)
            done += k
        pos += n
    return pos - dst_offset


def read_segments(segs: Sequence[tuple[Path, int, int]], out: torch.Tensor, fds: FdCache) -> torch.Tensor:
    """Fill a contiguous tensor from runs (what one tp rank needs, and nothing else)."""
    view = memoryview(out.view(torch.uint8).reshape(-1).numpy()).cast("B")
    pos = 0
    for path, off, n in segs:
        got = 0
        while got < n:
            k = os.preadv(fds.fd(path), [view[pos + got:pos + n]], off + got)
            if k == 0:
                raise OSError(f"{path}: file ends before offset {off + n} (truncated?)")
            got += k
        pos += n
    return out


def iter_runs(segs: Sequence[tuple[Path, int, int]]) -> Iterator[int]:
    for _, _, n in segs:
        yield n

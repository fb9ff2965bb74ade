"""Greedy bin packing of whole samples into rows of the sequence length.

Best-fit decreasing: samples are placed longest first into the row whose free space fits them
most tightly (a sorted list of free capacities, so O(n log n)). A sample is never split. Rows
keep their samples in data order and are ordered by their first sample, so the stream stays
close to the sampler's order. Deterministic: ties break by index.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence


def pack_rows(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Indices into ``lengths`` grouped into rows whose total length is at most ``capacity``."""
    if any(n > capacity for n in lengths):
        raise ValueError(f"a sample longer than the row capacity {capacity} cannot be packed")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    rows: list[list[int]] = []
    free: list[tuple[int, int]] = []  # sorted (free space, row id)
    for i in order:
        k = bisect.bisect_left(free, (lengths[i], -1))
        if k < len(free):
            space, row = free.pop(k)
        else:
            space, row = capacity, len(rows)
            rows.append([])
        rows[row].append(i)
        bisect.insort(free, (space - lengths[i], row))
    for row in rows:
        row.sort()
    rows.sort(key=lambda r: r[0])
    return rows


def group(items: Sequence, size: int, *, drop_last: bool) -> list[list]:
    """Consecutive groups of ``size`` (the last one shorter unless ``drop_last``)."""
    out = [list(items[i:i + size]) for i in range(0, len(items), size)]
    if drop_last and out and len(out[-1]) < size:
        out.pop()
    return out


def packing_efficiency(rows: Sequence[Sequence[int]], lengths: Sequence[int], row_len: int) -> float:
    """Real tokens / total tokens when every row is ``row_len`` long."""
    total = len(rows) * row_len
    return sum(lengths[i] for r in rows for i in r) / total if total else 0.0

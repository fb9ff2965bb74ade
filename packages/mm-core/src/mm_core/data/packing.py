"""Greedy bin packing of whole samples into rows of the sequence length.

Best-fit decreasing: samples are placed longest first into the row whose free space fits them
most tightly (a sorted list of free capacities, so O(n log n)). A sample is never split. Rows
keep their samples in data order and are ordered by their first sample, so the stream stays
close to the sampler's order. Deterministic: ties break by index.

Packing fills rows, so with ``micro_batch_size`` counting rows, an optimizer step holds more
samples than without it (``samples_per_step`` says how many). ``packing_samples: fixed`` packs
each micro-batch's ``micro_batch_size`` samples into as few rows as they fit instead
(``pack_groups``): the same samples per step as without packing, minus the padding.
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


def pack_groups(indices: Sequence[int], lengths: Sequence[int], size: int, capacity: int, *,
                drop_last: bool) -> list[list[list[int]]]:
    """Micro-batches of exactly ``size`` consecutive samples of ``indices`` (the last one shorter
    unless ``drop_last``), each packed into rows of at most ``capacity`` tokens."""
    return [[[g[i] for i in row] for row in pack_rows([lengths[j] for j in g], capacity)]
            for g in group(indices, size, drop_last=drop_last)]


def samples_per_step(micro_batches: Sequence[Sequence[Sequence[int]]], per_step: int) -> list[int]:
    """Samples of each optimizer step, when consecutive runs of ``per_step`` micro-batches (lists of
    rows of sample indices) make one step."""
    counts = [sum(len(row) for row in mb) for mb in micro_batches]
    return [sum(counts[i:i + per_step]) for i in range(0, len(counts), per_step)]


def packing_efficiency(rows: Sequence[Sequence[int]], lengths: Sequence[int], row_len: int) -> float:
    """Real tokens / total tokens when every row is ``row_len`` long."""
    total = len(rows) * row_len
    return sum(lengths[i] for r in rows for i in r) / total if total else 0.0

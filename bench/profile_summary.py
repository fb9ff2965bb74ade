"""Where a training step's time goes, from a ``torch.profiler`` trace: the summary bench JSON holds.

Read from the Chrome trace the profiler exports (``export_chrome_trace``), whose fields are stable
across torch versions:

- **work**: on CUDA every GPU kernel, copy and fill (``cat`` ``kernel``/``gpu_memcpy``/``gpu_memset``)
  with its device time; on CPU (no device events) every operator's self time (its time minus that
  of the operators nested in it).
- **categories**: ``gemm``, ``attention``, ``elementwise`` (norms, rotary, activations, copies,
  reductions), ``communication``, ``optimizer`` (whatever runs inside the ``optimizer`` range) and
  ``other`` (CPU: framework overhead outside ``aten::`` operators). Named by the kernel and the
  operator that launched it, so ``aten::mm`` counts as a GEMM whatever kernel cuBLAS picked.
- **regions**: the innermost ``record_function`` range of ``REGIONS`` (``vision``, ``decoder``,
  ``loss``, ``optimizer``) around the launching operator. Backward work runs outside those ranges
  (on CUDA, on autograd's own thread); it is given the range of the forward operator with the
  same autograd sequence number, so the vision tower's backward counts as ``vision``.
- **host_gap**: the time inside the ``step`` ranges during which no work runs (an idle GPU on
  CUDA: launch overhead, host syncs, Python).

Shares are of the summed ``step`` ranges' wall time. ``bench/gpu_train.py --profile`` opens the
ranges and stores the result; ``python bench/profile_summary.py TRACE.json`` prints one.
"""

from __future__ import annotations

import argparse
import json
import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

STEP = "step"
REGIONS = ("vision", "decoder", "loss", "optimizer")
CATEGORIES = ("gemm", "attention", "elementwise", "communication", "optimizer", "other")
DEVICE_CATS = ("kernel", "gpu_memcpy", "gpu_memset")
BACKWARD_PREFIX = "autograd::engine::evaluate_function"

_ATTENTION = re.compile(r"flash|fmha|attention|sdpa|scaled_dot_product|varlen_attn")
_GEMM = re.compile(r"gemm|cutlass|xmma|nvjet|cublas|wgmma|aten::(mm|addmm|bmm|baddbmm|matmul|linear|_grouped_mm)\b"
                   r"|_scaled_mm")
_COMM = re.compile(r"nccl|gloo|c10d::|all_reduce|allreduce|all_gather|reduce_scatter|alltoall")


@dataclass
class _Event:
    name: str
    cat: str
    tid: Any
    start: float  # microseconds
    end: float
    args: dict[str, Any]
    parent: _Event | None = None
    child_time: float = 0.0
    region: str | None = field(default=None, repr=False)
    resolved: bool = field(default=False, repr=False)


def categorize(name: str, op: str = "", region: str | None = None) -> str:
    """The category of one piece of work from its kernel (or operator) name and launching operator."""
    if region == "optimizer":
        return "optimizer"
    text = f"{name} {op}".lower()
    if _COMM.search(text):
        return "communication"
    if _ATTENTION.search(text):
        return "attention"
    if _GEMM.search(text):
        return "gemm"
    if op.startswith(("aten::", "mm::")) or name.startswith(("aten::", "mm::")) or any(
            c in text for c in ("kernel", "triton", "elementwise", "reduce", "memcpy", "memset")):
        return "elementwise"
    return "other"


def _events(trace: dict[str, Any] | list[dict[str, Any]]) -> list[dict[str, Any]]:
    raw = trace["traceEvents"] if isinstance(trace, dict) else trace
    return [e for e in raw if e.get("ph") == "X" and "ts" in e and "dur" in e]


def _nest(host: list[_Event]) -> None:
    """Set each host event's innermost enclosing host event on its thread (and child time sums)."""
    by_tid: dict[Any, list[_Event]] = defaultdict(list)
    for e in host:
        by_tid[e.tid].append(e)
    for events in by_tid.values():
        events.sort(key=lambda e: (e.start, -(e.end - e.start)))
        stack: list[_Event] = []
        for e in events:
            while stack and stack[-1].end <= e.start:
                stack.pop()
            if stack:
                e.parent = stack[-1]
                if e.cat == "cpu_op":
                    op_parent = next((p for p in reversed(stack) if p.cat == "cpu_op"), None)
                    if op_parent is not None:
                        op_parent.child_time += e.end - e.start
            stack.append(e)


def _region(e: _Event | None, forward_region: dict[int, str | None], memo: bool = True) -> str | None:
    """Innermost named range around ``e``; backward operators take their forward operator's
    (``memo``: remember the answer for every event walked, once ``forward_region`` is complete)."""
    chain = []
    found: str | None = None
    while e is not None:
        if e.resolved:
            found = e.region
            break
        chain.append(e)
        if e.cat == "user_annotation" and e.name in REGIONS:
            found = e.name
            break
        seq = e.args.get("Sequence number")
        if e.name.startswith(BACKWARD_PREFIX) and seq is not None and seq in forward_region:
            found = forward_region[seq]
            break
        e = e.parent
    if memo:
        for c in chain:
            c.region, c.resolved = found, True
    return found


def _union(intervals: Iterable[tuple[float, float]]) -> float:
    total, cur_s, cur_e = 0.0, None, None
    for s, e in sorted(intervals):
        if cur_e is None or s > cur_e:
            if cur_e is not None:
                total += cur_e - cur_s
            cur_s, cur_e = s, e
        else:
            cur_e = max(cur_e, e)
    if cur_e is not None:
        total += cur_e - cur_s
    return total


def _clip(start: float, end: float, windows: list[tuple[float, float]]) -> list[tuple[float, float]]:
    return [(max(start, ws), min(end, we)) for ws, we in windows if min(end, we) > max(start, ws)]


def summarize_trace(trace: dict[str, Any] | list[dict[str, Any]], top: int = 12) -> dict[str, Any]:
    """The time split of the ``step`` ranges in a Chrome trace (see the module docstring)."""
    raw = _events(trace)
    host = [_Event(e["name"], e.get("cat", ""), e.get("tid"), float(e["ts"]), float(e["ts"]) + float(e["dur"]),
                   e.get("args") or {}) for e in raw if e.get("cat") in ("cpu_op", "user_annotation")]
    windows = sorted((e.start, e.end) for e in host if e.cat == "user_annotation" and e.name == STEP)
    if not windows:
        raise ValueError(f"profile trace: no '{STEP}' range; wrap each profiled step in "
                         f"torch.profiler.record_function('{STEP}')")
    _nest(host)
    by_id = {e.args["External id"]: e for e in host if e.cat == "cpu_op" and "External id" in e.args}
    forward_region: dict[int, str | None] = {}
    for e in host:
        seq = e.args.get("Sequence number")
        if e.cat == "cpu_op" and seq is not None and not e.name.startswith(BACKWARD_PREFIX) \
                and "Backward" not in e.name and seq not in forward_region:
            forward_region[seq] = _region(e, {}, memo=False)
    device = [e for e in raw if e.get("cat") in DEVICE_CATS]
    work = []  # (name, launching op, region, start, end, time counted)
    if device:
        for d in device:
            args = d.get("args") or {}
            op = by_id.get(args.get("External id"))
            start, end = float(d["ts"]), float(d["ts"]) + float(d["dur"])
            work.append((d["name"], op.name if op else "", _region(op, forward_region), start, end, end - start))
    else:
        for e in host:
            if e.cat == "cpu_op":
                self_time = max(0.0, e.end - e.start - e.child_time)
                work.append((e.name, e.name, _region(e, forward_region), e.start, e.end, self_time))
    window_us = sum(we - ws for ws, we in windows)
    cats: dict[str, float] = dict.fromkeys(CATEGORIES, 0.0)
    regions: dict[str, float] = dict.fromkeys((*REGIONS, "other"), 0.0)
    kernels: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    busy = []
    for name, op, region, start, end, counted in work:
        inside = _clip(start, end, windows)
        if not inside:
            continue
        share = counted * sum(e - s for s, e in inside) / max(end - start, 1e-9)
        cat = categorize(name, op, region)
        cats[cat] += share
        regions[region or "other"] += share
        kernels[name][0] += share
        kernels[name][1] += 1
        if device:
            busy += inside
    if not device:  # CPU: busy while any top-level operator runs
        busy = [iv for e in host if e.cat == "cpu_op" and (e.parent is None or e.parent.cat != "cpu_op")
                for iv in _clip(e.start, e.end, windows)]
    gap = max(0.0, window_us - _union(busy))
    ms = 1e-3
    ranked = sorted(kernels.items(), key=lambda kv: -kv[1][0])[:top]
    return {
        "device": "cuda" if device else "cpu",
        "steps": len(windows),
        "step_ms": window_us * ms / len(windows),
        "host_gap_ms": gap * ms / len(windows),
        "categories_ms": {k: v * ms / len(windows) for k, v in cats.items()},
        "regions_ms": {k: v * ms / len(windows) for k, v in regions.items()},
        "share": {**{k: v / window_us for k, v in cats.items()}, "host_gap": gap / window_us},
        "region_share": {k: v / window_us for k, v in regions.items()},
        "top": [{"name": n[:120], "ms_per_step": t * ms / len(windows), "calls": c, "category": categorize(n)}
                for n, (t, c) in ranked],
    }


def summarize_profiler(prof: Any, trace_path: str | Path, top: int = 12) -> dict[str, Any]:
    """Export ``prof`` (a finished ``torch.profiler.profile``) to ``trace_path`` and summarise it."""
    prof.export_chrome_trace(str(trace_path))
    return summarize_trace(json.loads(Path(trace_path).read_text()), top=top)


def one_line(summary: dict[str, Any]) -> str:
    """The shares as one printable line (percent of the step)."""
    s, r = summary["share"], summary["region_share"]
    parts = [f"{k} {100 * s[k]:.0f}%" for k in (*CATEGORIES, "host_gap") if s.get(k, 0) >= 0.005]
    regions = [f"{k} {100 * r[k]:.0f}%" for k in (*REGIONS, "other") if r.get(k, 0) >= 0.005]
    return f"{summary['step_ms']:.1f} ms/step: " + ", ".join(parts) + " | " + ", ".join(regions)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("trace", help="a Chrome trace from torch.profiler with 'step' ranges")
    args = p.parse_args(argv)
    summary = summarize_trace(json.loads(Path(args.trace).read_text()))
    print(json.dumps(summary, indent=1))
    print(one_line(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Run every benchmark of the project and write one markdown table (bench/results/SUMMARY.md).

    .venv/bin/python bench/run_all.py               # full sizes (the convert benchmark writes ~15 GB, minutes)
    .venv/bin/python bench/run_all.py --quick       # reduced sizes, a few minutes in all
    .venv/bin/python bench/run_all.py --only demo   # some of: convert, qwen_step, data, train_step, demo, gpu_train, packed_attention
    .venv/bin/python bench/run_all.py --no-run      # only rebuild SUMMARY.md from the JSON already in results/

Each benchmark runs as its own process (its one-line summary is shown) and writes its JSON to
bench/results/<name>.json; `mm-run demo` writes its summary.json, copied to results/demo.json.
gpu_train and packed_attention run only where CUDA is visible (elsewhere its last JSON, if any, stays in the table).
The table gives each figure and its ratio to the benchmark's baseline (transformers, `cp`, the
reference's data loading, full-logits cross entropy, chance or the issue's goal). A benchmark that
fails is reported in the table with its exit status, and the others still run. The README
includes SUMMARY.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
REPO = HERE.parent
DEMO_WORK = HERE / ".demo_work"

Row = tuple[str, str, str, str]  # (figure, value, baseline, ratio)


def _get(d: dict[str, Any], path: str, default: Any = None) -> Any:
    for key in path.split("."):
        if not isinstance(d, dict) or key not in d:
            return default
        d = d[key]
    return d


def _f(x: Any, fmt: str = ".2f", unit: str = "") -> str:
    return "n/a" if x is None else f"{x:{fmt}}{unit}"


def _ratio(x: Any) -> str:
    return "n/a" if x is None else f"{x:.2f}x"


# -- benchmarks: how to run them and how to read their JSON ------------------------------------------

def _convert_rows(r: dict[str, Any]) -> list[Row]:
    gb = _get(r, "model_bytes", 0) / 1e9
    rows = [
        (f"hf_to_mm tp2 pp2 ({gb:.1f} GB, scale {_get(r, 'scale')})", _f(_get(r, "hf_to_mm.gb_per_s"), ".2f", " GB/s"),
         f"`cp` {_f(_get(r, 'cp_gb_per_s'), '.2f', ' GB/s')}", _ratio(_get(r, "hf_to_mm.vs_cp"))),
        ("mm_to_hf back (bit-exact: " + str(_get(r, "bit_exact")) + ")", _f(_get(r, "mm_to_hf.gb_per_s"), ".2f", " GB/s"),
         f"`cp` {_f(_get(r, 'cp_gb_per_s'), '.2f', ' GB/s')}", _ratio(_get(r, "mm_to_hf.vs_cp"))),
    ]
    rss = _get(r, "hf_to_mm.peak_rss_bytes")
    rows.append(("hf_to_mm peak RSS", _f(rss / 2**30 if rss else None, ".2f", " GiB"), "goal 2 GiB",
                 _ratio(rss / 2**31 if rss else None)))
    rows.append(("speed vs naive load-rename-save (per GB)", _f(_get(r, "hf_to_mm.gb_per_s"), ".2f", " GB/s"),
                 f"naive {_f(_get(r, 'naive.gb_per_s'), '.2f', ' GB/s')}", _ratio(_get(r, "ours_vs_naive_speed"))))
    return rows


def _qwen_step_rows(r: dict[str, Any]) -> list[Row]:
    basis = _get(r, "tokens_per_s_basis", "")
    return [
        (f"fwd+bwd tokens/s ({_get(r, 'dtype')}, {_get(r, 'threads')} thread(s); {basis})",
         _f(_get(r, "ours.tokens_per_s"), ".0f"), f"transformers {_f(_get(r, 'transformers.tokens_per_s'), '.0f')}",
         _ratio(_get(r, "speedup"))),
        ("fwd+bwd peak memory", _f(_get(r, "ours.peak_mem_mb"), ".0f", " MB"),
         f"transformers {_f(_get(r, 'transformers.peak_mem_mb'), '.0f', ' MB')}", _ratio(_get(r, "memory_ratio"))),
    ]


def _data_rows(r: dict[str, Any]) -> list[Row]:
    rows = []
    for w in ("workers_0", "workers_2"):
        rows.append((f"image records/s, {w.replace('_', ' ')} ({_get(r, 'image_px')} JPEG)",
                     _f(_get(r, f"images.{w}.ours.samples_per_s"), ".1f"),
                     f"open-twice {_f(_get(r, f'images.{w}.open_twice_baseline.samples_per_s'), '.1f')}",
                     _ratio(_get(r, f"images.{w}.speedup"))))
    rows.append(("video records/s, 0 workers", _f(_get(r, "videos.workers_0.samples_per_s"), ".1f"), "-", "-"))
    eff = _get(r, "packing.efficiency")
    rows.append(("packing efficiency (real / row tokens)", _f(100 * eff if eff else None, ".1f", "%"), "goal 95%",
                 _ratio(eff / 0.95 if eff else None)))
    return rows


def _train_step_rows(r: dict[str, Any]) -> list[Row]:
    return [
        ("training tokens/s (engine, 2 procs; CPU-time basis)", _f(_get(r, "engine_2proc.tokens_per_s_cpu"), ".0f"),
         f"transformers loop {_f(_get(r, 'transformers_loop.tokens_per_s_cpu'), '.0f')}",
         _ratio(_get(r, "throughput_ratio_cpu"))),
        (f"CE peak memory, chunked (V={_get(r, 'ce_memory.vocab')}, T={_get(r, 'ce_memory.tokens')})",
         _f(_get(r, "ce_memory.chunk_growth_gb"), ".2f", " GB"),
         f"full logits {_f(_get(r, 'ce_memory.full_growth_gb_scaled'), '.2f', ' GB')}",
         _ratio(_get(r, "ce_memory.chunk_over_full"))),
    ]


def _demo_rows(r: dict[str, Any]) -> list[Row]:
    acc, chance = _get(r, "accuracy_after.accuracy"), _get(r, "chance")
    total = _get(r, "total_seconds")
    steps = _get(r, "steps")
    return [
        (f"demo held-out exact match after {steps} steps (before: "
         f"{_f(100 * _get(r, 'accuracy_before.accuracy', 0), '.0f', '%')})", _f(100 * acc if acc is not None else None,
                                                                              ".1f", "%"),
         f"chance {_f(100 * chance if chance else None, '.0f', '%')}; goal 90%",
         _ratio(acc / chance if acc is not None and chance else None)),
        (f"demo total time ({_get(r, 'cpu_threads')} CPU threads)", _f(total, ".0f", " s"), "goal 600 s",
         _ratio(total / 600 if total else None)),
        ("demo training questions/s (median step)", _f(_get(r, "throughput.samples_per_s"), ".1f"), "-", "-"),
        ("demo real (input) tokens/s (median step)", _f(_get(r, "throughput.real_tokens_per_s"), ".0f"), "-", "-"),
        ("demo trained (answer, loss) tokens/s (median step)", _f(_get(r, "throughput.loss_tokens_per_s"), ".0f"),
         "-", "-"),
        ("demo transformers reload: equal greedy answers",
         f"{_get(r, 'hf_check.equal')}/{_get(r, 'hf_check.questions')}", "all", "-"),
    ]


def _gpu_train_rows(r: dict[str, Any]) -> list[Row]:
    auto, fsdp, ref = (_get(r, k, {}) for k in ("engine_auto", "engine_fsdp", "transformers"))
    return [
        (f"1-GPU training tokens/s ({_get(r, 'device')}, bf16, {_f(_get(auto, 'params', 0) / 1e9, '.2f')}B params, "
         f"seq {_get(r, 'workload.seq')}; MFU {_f(100 * _get(auto, 'mfu', 0), '.1f', '%')})",
         _f(_get(auto, "tokens_per_s"), ".0f"), f"transformers loop {_f(_get(ref, 'tokens_per_s'), '.0f')}",
         _ratio(_get(r, "speedup_vs_transformers"))),
        ("same, FSDP2 forced at dp=1 (`parallel.fsdp always`)", _f(_get(fsdp, "tokens_per_s"), ".0f"),
         f"engine default {_f(_get(auto, 'tokens_per_s'), '.0f')}",
         _ratio(1 / _get(r, "speedup_vs_fsdp_at_dp1") if _get(r, "speedup_vs_fsdp_at_dp1") else None)),
        ("1-GPU training peak memory", _f(_get(auto, "peak_memory_gb"), ".1f", " GB"),
         f"transformers {_f(_get(ref, 'peak_memory_gb'), '.1f', ' GB')}", _ratio(_get(r, "memory_ratio_vs_transformers"))),
    ]


def _packed_attention_rows(r: dict[str, Any]) -> list[Row]:
    return [(f"packed attention fwd+bwd ({_get(r, 'device')}, {_get(r, 'rows')}x{_get(r, 'seq')} tokens, "
             f"{_get(r, 'samples_per_row')} samples/row)", _f(_get(r, "flash_varlen_ms"), ".2f", " ms"),
             f"masked reference {_f(_get(r, 'masked_reference_ms'), '.2f', ' ms')}", _ratio(_get(r, "speedup")))]


def _demo_command(quick: bool) -> list[str]:
    cmd = [sys.executable, "-m", "mm_core.cli.main", "demo", "--workdir", str(DEMO_WORK), "--quiet"]
    if quick:
        cmd += ["--train-images", "240", "--eval-images", "48", "--steps", "100", "--lr", "0.004",
                "--num-workers", "0", "--hf-check-limit", "48"]  # the CI test's reduced run
    return cmd


BENCHES: dict[str, dict[str, Any]] = {
    "convert": {"title": "Conversion (Qwen2.5-VL-3B shapes, bf16)", "rows": _convert_rows,
                "cmd": lambda q: [sys.executable, str(HERE / "convert.py"), *(["--scale", "0.05"] if q else [])]},
    "qwen_step": {"title": "Model step (mm Qwen2.5-VL vs transformers)", "rows": _qwen_step_rows,
                  "cmd": lambda q: [sys.executable, str(HERE / "qwen_step.py"), *(["--quick"] if q else [])]},
    "data": {"title": "Data pipeline", "rows": _data_rows,
             "cmd": lambda q: [sys.executable, str(HERE / "data.py"), *(["--quick"] if q else [])]},
    "train_step": {"title": "Training step and loss memory", "rows": _train_step_rows,
                   "cmd": lambda q: [sys.executable, str(HERE / "train_step.py"), *(["--quick"] if q else [])]},
    "demo": {"title": "`mm-run demo` (tiny Qwen2.5-VL from random init, CPU)", "rows": _demo_rows,
             "cmd": _demo_command},
    "gpu_train": {"title": "One-GPU training step (needs CUDA)", "rows": _gpu_train_rows, "needs_cuda": True,
                  "cmd": lambda q: [sys.executable, str(HERE / "gpu_train.py"), *(["--quick"] if q else [])]},
    "packed_attention": {"title": "Packed-row attention (needs CUDA)", "rows": _packed_attention_rows,
                         "needs_cuda": True, "cmd": lambda q: [sys.executable, str(HERE / "packed_attention.py")]},
}


def _cuda_visible() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def run_one(name: str, quick: bool, status: dict[str, Any]) -> None:
    """Run benchmark ``name``; its JSON lands in results/<name>.json."""
    spec = BENCHES[name]
    if spec.get("needs_cuda") and not _cuda_visible():
        print(f"\n== {name}: skipped (no CUDA device visible; its last results/{name}.json stays)", flush=True)
        return
    cmd: list[str] = spec["cmd"](quick)
    if name != "demo":
        cmd += ["--out", str(RESULTS / f"{name}.json")]
    print(f"\n== {name}: {' '.join(cmd)}", flush=True)
    t0 = time.perf_counter()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    rc = subprocess.call(cmd, cwd=REPO, env=env)
    status[name] = {"rc": rc, "seconds": time.perf_counter() - t0, "quick": quick}
    if name == "demo" and (DEMO_WORK / "summary.json").is_file():
        shutil.copyfile(DEMO_WORK / "summary.json", RESULTS / "demo.json")
        shutil.copyfile(DEMO_WORK / "demo.png", RESULTS / "demo.png") if (DEMO_WORK / "demo.png").is_file() else None
    if rc != 0:
        print(f"!! {name} failed with exit status {rc}", file=sys.stderr, flush=True)


def summary_markdown(status: dict[str, Any]) -> str:
    """The table from whatever JSON is in results/ (a missing or failed benchmark says so)."""
    lines = ["| benchmark | figure | value | baseline | ratio |", "|---|---|---|---|---|"]
    for name, spec in BENCHES.items():
        path = RESULTS / f"{name}.json"
        st = status.get(name)
        if st is not None and st["rc"] != 0:
            lines.append(f"| {spec['title']} | failed (exit status {st['rc']}) | | | |")
            continue
        if not path.is_file():
            lines.append(f"| {spec['title']} | not run | | | |")
            continue
        rows: list[Row] = spec["rows"](json.loads(path.read_text()))
        for i, (fig, value, base, ratio) in enumerate(rows):
            lines.append(f"| {spec['title'] if i == 0 else ''} | {fig} | {value} | {base} | {ratio} |")
    notes = ["", "Ratios: ours / baseline (for memory and time, lower is better; for speed and accuracy, higher is",
             "better). CPU figures come from a shared 2-core machine unless stated; see each JSON in",
             "bench/results/ for the raw numbers, run sizes and load."]
    quick = sorted(n for n, st in status.items() if st.get("quick"))
    if quick:
        notes.append(f"Reduced (--quick) runs this time: {', '.join(quick)}.")
    return "\n".join(lines + notes) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="reduced sizes for every benchmark")
    p.add_argument("--only", help=f"comma-separated subset of: {', '.join(BENCHES)}")
    p.add_argument("--no-run", action="store_true", help="only rebuild SUMMARY.md from results/*.json")
    p.add_argument("--out", default=str(RESULTS / "SUMMARY.md"))
    args = p.parse_args(argv)
    names = list(BENCHES) if not args.only else [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in BENCHES]
    if unknown:
        p.error(f"unknown benchmark(s) {unknown}; known: {', '.join(BENCHES)}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    status_file = RESULTS / "run_all_status.json"
    status: dict[str, Any] = json.loads(status_file.read_text()) if status_file.is_file() else {}
    if not args.no_run:
        for name in names:
            run_one(name, args.quick, status)
        status_file.write_text(json.dumps(status, indent=1))
    table = summary_markdown(status)
    Path(args.out).write_text(table)
    print(f"\n{table}\n-> {args.out}")
    failed = [n for n in names if status.get(n, {}).get("rc", 0) != 0]
    return 1 if failed and not args.no_run else 0


if __name__ == "__main__":
    sys.exit(main())

"""The demo's figure (loss curve and accuracy, a PNG) and its closing summary."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mm_core.demo.evaluate import Accuracy
from mm_core.engine.run_header import is_step_record

THROUGHPUT = ("real_tokens_per_s", "loss_tokens_per_s", "samples_per_s", "step_time_s")


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Step records of `mm-run finetune`'s JSONL metrics file (headers skipped; last record per step wins)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: mm-run finetune wrote no metrics file (output.metrics_file)")
    by_step: dict[int, dict[str, Any]] = {}
    for line in path.read_text().splitlines():
        if line.strip():
            rec = json.loads(line)
            if is_step_record(rec):
                by_step[int(rec["step"])] = rec
    return [by_step[k] for k in sorted(by_step)]


def throughput(metrics: list[dict[str, Any]], skip: int = 3) -> dict[str, float]:
    """Median real (input) and loss (answer) tokens/s and samples/s, leaving out the first steps (start-up, warm caches)."""
    import statistics

    steady = metrics[skip:] if len(metrics) > skip else metrics
    if not steady:
        return dict.fromkeys(THROUGHPUT, 0.0)
    return {k: float(statistics.median(r.get(k, 0.0) for r in steady)) for k in THROUGHPUT}


def plot(path: Path, metrics: list[dict[str, Any]], before: Accuracy, after: Accuracy, chance: float,
         title: str) -> Path:
    """Loss per step on the left; accuracy per question kind before and after on the right."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    steps = [r["step"] for r in metrics]
    ax1.plot(steps, [r["loss"] for r in metrics], lw=1.2, color="tab:blue")
    ax1.set_yscale("log")
    ax1.set_xlabel("step")
    ax1.set_ylabel("training loss (log scale)")
    ax1.set_title("mm-run finetune")
    ax1.grid(alpha=0.3)
    kinds = list(after.per_kind) + ["all"]
    b = [before.per_kind.get(k, 0.0) for k in kinds[:-1]] + [before.value]
    a = [after.per_kind.get(k, 0.0) for k in kinds[:-1]] + [after.value]
    x = range(len(kinds))
    ax2.bar([i - 0.2 for i in x], [100 * v for v in b], width=0.4, label="before", color="tab:gray")
    ax2.bar([i + 0.2 for i in x], [100 * v for v in a], width=0.4, label="after", color="tab:green")
    ax2.axhline(100 * chance, ls="--", color="tab:red", lw=1, label=f"chance ({100 * chance:.0f}%)")
    ax2.set_xticks(list(x), kinds)
    ax2.set_ylim(0, 122)  # headroom: the legend sits above bars that reach 100%
    ax2.set_ylabel("held-out exact match (%)")
    ax2.set_title("accuracy (mm-run infer, greedy)")
    ax2.legend(loc="upper center", ncol=3, fontsize=8)
    for i, (vb, va) in enumerate(zip(b, a)):  # label both bars: a 0% bar has no height to show
        ax2.text(i - 0.2, 100 * vb + 1, f"{100 * vb:.0f}", ha="center", fontsize=8)
        ax2.text(i + 0.2, 100 * va + 1, f"{100 * va:.0f}", ha="center", fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _load_note(load: dict[str, Any], cpus: int) -> str:
    start, end = load.get("start"), load.get("end")
    if start is None or end is None or max(start, end) < cpus + 0.5:
        return ""
    return f" (shared: load average {start:.1f} -> {end:.1f}, so these times are pessimistic)"


def summary_text(s: dict[str, Any]) -> str:
    """The closing lines of `mm-run demo`."""
    b, a = s["accuracy_before"], s["accuracy_after"]
    lines = [
        "",
        "=" * 72,
        "mm demo summary",
        f"  held-out exact match: {100 * b['accuracy']:.1f}% before -> {100 * a['accuracy']:.1f}% after "
        f"({a['correct']}/{a['total']} questions; chance {100 * s['chance']:.0f}%)",
        "  per question:        " + ", ".join(f"{k} {100 * v:.0f}%" for k, v in a["per_kind"].items()),
        f"  training:            {s['steps']} steps in {s['train_seconds']:.0f}s, "
        f"{s['throughput']['samples_per_s']:.1f} questions/s, {s['throughput']['real_tokens_per_s']:.0f} real "
        f"tokens/s, {s['throughput']['loss_tokens_per_s']:.0f} of them trained answer tokens (median step), "
        f"final loss {s['final_loss']:.4f}",
        f"  transformers reload: {s['hf_check']['equal']}/{s['hf_check']['questions']} greedy answers equal "
        f"to mm-run infer's",
        f"  total time:          {s['total_seconds']:.0f}s on {s['cpu_threads']} CPU thread(s)"
        + _load_note(s.get("load_average") or {}, s["cpu_threads"]),
        f"  goal (>= 90% in < 10 min): {'met' if s['goal_met'] else 'not met'}",
        f"  files:               {s['workdir']}",
    ]
    for name, path in s["files"].items():
        lines.append(f"    {name:<18} {path}")
    lines.append("=" * 72)
    return "\n".join(lines)

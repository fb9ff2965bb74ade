"""`mm-run demo`: data -> tiny model -> mm-convert -> finetune -> evaluate -> convert back -> transformers.

Every step that users run on a cluster runs here as the same command (printed before it runs,
in the work directory, with paths relative to it), so the demo is also a worked example of the
workflow. Steps done in this process (drawing the data, creating the random model, the figure)
say what they do instead.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from mm_core.demo.config import DemoPaths, DemoSettings, finetune_config
from mm_core.demo.data import chance_accuracy, write_demo_data
from mm_core.demo.evaluate import Accuracy, read_answers, score
from mm_core.demo.report import plot, read_metrics, summary_text, throughput
from mm_core.demo.steps import StepRunner
from mm_core.errors import MMError
from mm_core.specs import ModelSpec

MARKER = ".mm-demo"  # marks a directory the demo made, so a rerun may replace its outputs
OUTPUTS = ("data", "hf_init", "mm_init", "checkpoints", "hf_trained", "eval", "logs", "cache", "finetune.yaml",
           "metrics.jsonl", "demo.png", "summary.json")
TOTAL_STEPS = 9
GOAL_ACCURACY, GOAL_SECONDS = 0.9, 600.0


def prepare_workdir(root: Path) -> None:
    """Create the work directory, or clear a previous demo's outputs; never touch anything else."""
    if root.exists() and any(root.iterdir()) and not (root / MARKER).is_file():
        raise FileExistsError(f"--workdir {root} is not empty and was not made by mm-run demo; "
                              "give a new or empty directory")
    root.mkdir(parents=True, exist_ok=True)
    for name in OUTPUTS:
        path = root / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    (root / MARKER).write_text("made by mm-run demo; rerunning the demo replaces its outputs here\n")


def _family(runner: StepRunner, s: DemoSettings) -> ModelSpec:
    """The demo's model family, asked of the plugin registry (core imports no family package)."""
    from mm_core.plugins import get_plugin_manager

    try:
        spec = get_plugin_manager().model(s.model.family)
    except MMError as e:
        raise runner.fail("model", f"the demo's model family: {e}") from None
    missing = [what for what, value in (("tiny_checkpoint", spec.tiny_checkpoint), ("converter", spec.converter))
               if value is None]
    if missing:
        raise runner.fail("model", f"model '{spec.name}' registers no {' and no '.join(missing)}; the demo needs both")
    return spec


def _make_model(runner: StepRunner, s: DemoSettings, p: DemoPaths) -> ModelSpec:
    spec = _family(runner, s)
    kwargs = s.model.save_kwargs()
    shown = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
    print(f"python: get_plugin_manager().model({spec.name!r}).tiny_checkpoint('{p.hf_init.name}', {shown})",
          flush=True)
    t0 = time.perf_counter()
    try:
        spec.tiny_checkpoint(p.hf_init, **kwargs)
    except Exception as e:  # noqa: BLE001 - shown with the step's name
        raise runner.fail("model", f"{type(e).__name__}: {e}") from e
    runner.note("model", time.perf_counter() - t0)
    size = sum(f.stat().st_size for f in p.hf_init.glob("*.safetensors"))
    cfg = json.loads((p.hf_init / "config.json").read_text())
    vocab = cfg.get("text_config", {}).get("vocab_size", cfg.get("vocab_size"))
    print(f"wrote {p.hf_init.name}/ ({size / 2**20:.1f} MiB of weights, vocabulary {vocab}, "
          f"tokenizer and processor files)", flush=True)
    return spec


def _show_accuracy(when: str, acc: Accuracy, answers: str) -> None:
    print(f"{acc.total} answers written to {answers}; for example:")
    for ex in acc.examples[:3]:
        print(f"  {ex['image']}: {ex['question']!r} -> {ex['answer']!r} (expected {ex['expected']!r})")
    kinds = ", ".join(f"{k} {100 * v:.0f}%" for k, v in acc.per_kind.items())
    print(f"held-out exact match {when}: {100 * acc.value:.1f}% ({kinds})", flush=True)


def _latest_iteration_dir(runner: StepRunner, p: DemoPaths) -> Path:
    marker = p.checkpoints / "latest_checkpointed_iteration.txt"
    if not marker.is_file():
        raise runner.fail("convert_back", f"{marker} does not exist: mm-run finetune saved no checkpoint")
    it = marker.read_text().strip()
    return p.checkpoints / (f"iter_{int(it):07d}" if it.isdigit() else it)


def run_demo(s: DemoSettings, *, verbose: bool = True) -> dict[str, Any]:
    """Run the whole demo in ``s.workdir``; returns the summary (also written to summary.json)."""
    t_start = time.perf_counter()
    load_start = _load_average()
    root = s.workdir.resolve()
    prepare_workdir(root)
    p = DemoPaths(root)
    runner = StepRunner(root, TOTAL_STEPS, verbose=verbose)
    rel = lambda path: str(Path(path).relative_to(root))  # noqa: E731 - commands run in the workdir
    print(f"mm demo: working in {root} (commands below run there)", flush=True)
    env = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "JSONARGPARSE_DEPRECATION_WARNINGS": "off"}
    p.eval.mkdir()

    runner.begin("data", f"write the synthetic VQA set: {s.train_images} train + {s.eval_images} held-out "
                         f"{s.image_size}x{s.image_size} PNG images, 3 questions each")
    t0 = time.perf_counter()
    data = write_demo_data(p.data, train_images=s.train_images, eval_images=s.eval_images,
                           image_size=s.image_size, seed=s.seed)
    runner.note("data", time.perf_counter() - t0)
    print(f"wrote {rel(data.train_json)} ({data.train_records} records), {rel(data.eval_json)} "
          f"({data.eval_records}), {rel(data.eval_prompts)} and images/ ({time.perf_counter() - t0:.1f}s)")

    runner.begin("model", "create a tiny Qwen2.5-VL-architecture model from random weights (HF directory, "
                          "real Qwen tokenizer)")
    converter = _make_model(runner, s, p).converter

    runner.begin("convert", "convert the HF checkpoint to the mm training layout")
    runner.run("convert", ["mm-convert", converter, "hf_to_mm", "--cfg.hf_config.hf_dir", rel(p.hf_init),
                           "--cfg.mm_dir", rel(p.mm_init), "--cfg.parallel_config.tp_size", "1"], env=env)

    infer = ["--input", rel(data.eval_prompts), "--max-new-tokens", str(s.max_new_tokens), "--batch-size", "50"]
    runner.begin("eval_before", "answer the held-out questions with the untrained model")
    runner.run("eval_before", ["mm-run", "infer", "--model", rel(p.mm_init), "--processor", rel(p.hf_init), *infer,
                               "--output", rel(p.eval / "before.jsonl")], env=env, stream=False)
    before = score(read_answers(p.eval / "before.jsonl"))
    _show_accuracy("before training", before, rel(p.eval / "before.jsonl"))

    runner.begin("finetune", f"fine-tune for {s.steps} steps of {s.batch_size} questions")
    p.finetune_yaml.write_text(yaml.safe_dump(finetune_config(s, p), sort_keys=False))
    train_seconds = runner.run("finetune", ["mm-run", "finetune", "--config", rel(p.finetune_yaml)], env=env)

    runner.begin("convert_back", "convert the trained checkpoint back to an HF directory")
    it_dir = _latest_iteration_dir(runner, p)
    runner.run("convert_back", ["mm-convert", converter, "dcp_to_hf", "--hf_dir", rel(p.hf_init),
                                "--dcp_dir", rel(it_dir), "--save_dir", rel(p.hf_trained)], env=env)

    runner.begin("eval_after", "answer the held-out questions with the trained model")
    runner.run("eval_after", ["mm-run", "infer", "--model", rel(p.hf_trained), *infer,
                              "--output", rel(p.eval / "after.jsonl")], env=env, stream=False)
    after = score(read_answers(p.eval / "after.jsonl"))
    _show_accuracy("after training", after, rel(p.eval / "after.jsonl"))

    runner.begin("hf_check", "reload the trained HF directory with transformers and compare greedy answers")
    check = ["python", "-m", "mm_core.demo.hf_check", "--model", rel(p.hf_trained), "--answers",
             rel(p.eval / "after.jsonl"), "--max-new-tokens", str(s.max_new_tokens),
             "--output", rel(p.eval / "hf_check.json")]
    if s.hf_check_limit is not None:
        check += ["--limit", str(s.hf_check_limit)]
    runner.run("hf_check", check, env=env)
    hf_check = json.loads((p.eval / "hf_check.json").read_text())

    runner.begin("report", "draw the loss curve and accuracy, write the summary")
    metrics = read_metrics(p.metrics)
    total = time.perf_counter() - t_start
    chance = chance_accuracy()
    title = (f"tiny Qwen2.5-VL from random init: {s.steps} steps, {100 * before.value:.0f}% -> "
             f"{100 * after.value:.0f}% held-out exact match ({total:.0f}s total)")
    plot(p.plot, metrics, before, after, chance, title)
    summary = {
        "accuracy_before": before.to_dict(), "accuracy_after": after.to_dict(), "chance": chance,
        "steps": s.steps, "final_loss": metrics[-1]["loss"] if metrics else float("nan"),
        "train_seconds": train_seconds, "throughput": throughput(metrics), "total_seconds": total,
        "step_seconds": runner.timings, "hf_check": {k: hf_check[k] for k in ("questions", "equal")},
        "goal_met": after.value >= GOAL_ACCURACY and total < GOAL_SECONDS,
        "cpu_threads": _cpu_threads(), "load_average": {"start": load_start, "end": _load_average()},
        "workdir": str(root), "settings": s.to_dict(),
        "commands": runner.commands,
        "files": {"images": rel(p.data / "images"), "train data": rel(data.train_json),
                  "held-out data": rel(data.eval_json), "initial model": rel(p.hf_init),
                  "mm layout": rel(p.mm_init), "finetune config": rel(p.finetune_yaml),
                  "checkpoints": rel(p.checkpoints), "trained model": rel(p.hf_trained),
                  "answers": rel(p.eval), "metrics": rel(p.metrics), "figure": rel(p.plot),
                  "summary": rel(p.summary), "logs": "logs"},
    }
    p.summary.write_text(json.dumps(summary, indent=1))
    print(summary_text(summary), flush=True)
    return summary


def _load_average() -> float | None:
    """1-minute load: timings taken while other work shares the CPU are pessimistic."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def _cpu_threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def main_safe(s: DemoSettings, verbose: bool = True) -> int:
    """Run the demo; a failing step prints its message (step, command, log) and returns 1."""
    try:
        run_demo(s, verbose=verbose)
    except (MMError, FileExistsError, FileNotFoundError) as e:
        print(f"\nerror: {e}", file=sys.stderr)
        return 1
    return 0

"""The stored figures behind bench/RESULTS.md: bench/measured/<name>.json, committed with the table.

bench/results/ is git-ignored scratch; a figure reaches the README's table only by being stored
here with its provenance (command, date, machine, git commit), so ``run_all.py --no-run`` rebuilds
the same table from a clean clone and no figure is copied by hand.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
MEASURED = HERE / "measured"


def display_command(cmd: list[str]) -> str:
    """``cmd`` as a user would type it: ``python`` for this interpreter, paths relative to the repo."""
    def one(arg: str) -> str:
        if arg == sys.executable:
            return "python"
        p = Path(arg)
        return str(p.relative_to(REPO)) if p.is_absolute() and p.is_relative_to(REPO) else arg
    return " ".join(one(a) for a in cmd)


def machine() -> str:
    """CPU model and count, and the GPU when one is visible (the figures depend on both)."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    text = f"{model}, {os.cpu_count()} CPUs"
    try:
        import torch

        if torch.cuda.is_available():
            text += f", {torch.cuda.get_device_name(0)}"
    except ImportError:
        pass
    return text


def git_commit() -> str:
    """HEAD's short hash; marked when tracked files differ from it (the figure is not exactly that commit)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True).stdout.strip()
    head = git("rev-parse", "--short", "HEAD") or "unknown"
    return head + (" + uncommitted changes" if git("status", "--porcelain", "--untracked-files=no") else "")


def stamp(results_file: Path, command: list[str], note: str = "") -> dict[str, Any]:
    """Provenance of a results file just written by ``command`` on this machine (date: the file's mtime)."""
    when = dt.datetime.fromtimestamp(results_file.stat().st_mtime, dt.UTC)
    p = {"command": display_command(command), "date": when.strftime("%Y-%m-%d %H:%M UTC"), "machine": machine(),
         "git_commit": git_commit()}
    return {**p, "note": note} if note else p


def is_quick(results: dict[str, Any]) -> bool:
    """Reduced-size runs are never stored (their figures are not the published sizes)."""
    return bool(results.get("quick") or (results.get("config") or {}).get("quick"))


def store(name: str, results_file: Path, command: list[str], directory: Path = MEASURED) -> Path:
    """Copy a full-size results file into measured/ with its provenance."""
    results = json.loads(results_file.read_text())
    if is_quick(results):
        raise ValueError(f"{results_file} is a --quick run; only full-size figures are stored")
    directory.mkdir(parents=True, exist_ok=True)
    out = directory / f"{name}.json"
    out.write_text(json.dumps({"provenance": stamp(results_file, command), "results": results}, indent=1) + "\n")
    return out


def load_all(directory: Path = MEASURED) -> dict[str, dict[str, Any]]:
    """Every stored record, by benchmark name."""
    return {p.stem: json.loads(p.read_text()) for p in sorted(directory.glob("*.json"))}

"""Each family's tiny example config trains as its comment says, and the loss falls.

``examples/<family>/finetune_tiny.yaml`` is what the README offers as the make-free first run; it
runs here exactly as documented (one process, its own settings), in a scratch working directory.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TINY = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "examples").glob("*/finetune_tiny.yaml")
              if p.parent.name != "demo")  # the demo's config is checked against the demo itself


def _losses(metrics: Path) -> list[float]:
    return [r["loss"] for r in map(json.loads, metrics.read_text().splitlines()) if "loss" in r]


@pytest.mark.parametrize("config", TINY)
def test_tiny_config_trains_and_lowers_the_loss(config, tmp_path):
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    cmd = [sys.executable, "-m", "mm_core.cli.main", "finetune", "--config", config,
           "--output.progress_bar", "false", "--output.log_interval", "1"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = list(tmp_path.glob("save_dir/*/metrics.jsonl"))
    assert len(metrics) == 1, metrics
    losses = _losses(metrics[0])
    assert len(losses) >= 10, losses
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < first - 0.3, f"{config}: loss {first:.3f} -> {last:.3f} did not fall"

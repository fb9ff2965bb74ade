"""examples/visualglm/finetune_tiny_lora.yaml as documented: the few-shot data in the original layout
train LoRA adapters on a tiny VisualGLM, the loss falls, ``mm-run lora merge`` folds them into the
base, and the merged model's logits equal the base with the adapters."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
CONFIG = "examples/visualglm/finetune_tiny_lora.yaml"
ITERS = 12


def test_tiny_lora_trains_merges_and_equals_base_plus_adapters(tmp_path: Path) -> None:
    from mm_core.cli.main import main
    from mm_core.family.hf_config import load_hf_config
    from mm_core.lora.apply import apply_lora, set_adapters
    from mm_core.lora.files import lora_config_of, read_adapters
    from mm_core.nn.pretrained import load_pretrained
    from mm_core.plugins import get_plugin_manager
    from mm_visualglm.tiny import make_inputs
    from mm_visualglm.tiny_example import write_example

    torch.set_num_threads(1)
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    write_example(tmp_path / "save_dir" / "visualglm_tiny")  # the config's first step, as its comment says
    cmd = [sys.executable, "-m", "mm_core.cli.main", "finetune", "--config", CONFIG, "--output.progress_bar", "false",
           "--output.log_interval", "1", "--training.train_iters", str(ITERS), "--output.save_interval", str(ITERS)]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600,
                          env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    save = tmp_path / "save_dir" / "visualglm_tiny_lora"
    losses = [r["loss"] for r in map(json.loads, (save / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    assert len(losses) == ITERS and sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.3, losses

    base_dir = tmp_path / "save_dir" / "visualglm_tiny" / "model"
    adapters = save / f"iter_{ITERS:07d}" / "lora"
    merged = tmp_path / "merged"
    assert main(["lora", "merge", "--base", str(base_dir), "--adapters", str(adapters), "--out", str(merged)]) == 0

    hf_config = load_hf_config(base_dir)
    batch = make_inputs(hf_config, [(1, 4, 3)], seed=2)
    tensors, meta = read_adapters(adapters)
    model = load_pretrained(base_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        base = model(**batch)
    apply_lora(model, lora_config_of(meta), get_plugin_manager().model("visualglm"), hf_config)
    set_adapters(model, tensors)
    with torch.no_grad():
        adapted = model(**batch)
        out = load_pretrained(merged, dtype=torch.float32).eval()(**batch)
    assert not torch.allclose(base, adapted, atol=1e-3), "the adapters changed nothing"
    torch.testing.assert_close(out, adapted, rtol=1e-4, atol=1e-4)

"""One training step at tp 2 (with sequence parallel where the family has it), at pp 2, cp 2 and at dp 2 equals one process (gloo on CPU, fp32), and the
engine's tp shards are the converter's.

The one-process reference trains in this process; the parallel layouts run one after the other
in ONE launch of 2 processes (``train_worker``). Two steps are taken so the second loss shows the
first update; losses, gradient norms and the saved weights must match (rtol 1e-5).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from mm_core.specs import ModelSpec
from mm_core.testing.hf_files import read_dcp_model
from mm_core.testing.layouts import pipeline_layouts

RTOL, ATOL = 1e-5, 1e-6
STEPS = 2
ROW_KEYS = ("input_ids", "attention_mask", "labels", "mm_token_type_ids", "token_type_ids")


def _rows(batch: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    """A text batch split into one-row micro-batches (media tensors are not split: text only)."""
    n = batch["input_ids"].shape[0]
    return [{k: v[i:i + 1] for k, v in batch.items() if k in ROW_KEYS} for i in range(n)]


def finetune_config(spec: ModelSpec, hf_dir: Path, save: Path, **parallel: Any) -> dict[str, Any]:
    layers = parallel.pop("layers", None)
    model: dict[str, Any] = {"name": spec.name, "hf_dir": str(hf_dir)}
    if layers is not None:
        model.update(vit_pp_layers=layers[0], llm_pp_layers=layers[1])
    return {
        "model": model,
        "data": {"source": "synthetic"},  # never built: the worker hands the trainer fixed micro-batches
        "parallel": {"device": "cpu", "pp_pad_multiple": 8, **parallel},
        "training": {"micro_batch_size": 1, "global_batch_size": 2, "seq_length": 512, "train_iters": STEPS,
                     "lr": 3e-3, "lr_schedule": "constant", "clip_grad": 1.0, "dtype": "fp32",
                     "loss_type": "per_token_loss", "seed": 7, "adam_eps": 1e-4},
        "output": {"progress_bar": False, "log_interval": 100, "save": str(save), "save_weights_only": True},
    }


class ParallelChecks:
    """Mixed into FamilyConformance."""

    def training_samples(self, hf_config: dict[str, Any]) -> list[dict[str, torch.Tensor]]:
        """Two one-row micro-batches: with media when the family has them."""
        if "image" in self.capabilities:
            second = "video" if "video" in self.capabilities else "two_images"
            return [self.make_batch(hf_config, "image", seed=21), self.make_batch(hf_config, second, seed=22)]
        return _rows(self.make_batch(hf_config, "text", seed=21))[:2]

    @pytest.fixture(scope="class")
    def parallel_runs(self, spec: ModelSpec, hf_dir: Path, hf_config: dict[str, Any], depths: tuple[int, int],
                      tmp_path_factory: pytest.TempPathFactory) -> Path:
        import yaml

        from mm_core.testing.train_worker import run_all

        root = tmp_path_factory.mktemp(f"{spec.name}_train")
        torch.save(self.training_samples(hf_config), root / "batches.pt")

        def job(name: str, runs: dict[str, dict[str, Any]], **extra: Any) -> Path:
            files = {}
            for run, cfg in runs.items():
                files[run] = str(root / f"{run}.yaml")
                Path(files[run]).write_text(yaml.safe_dump(cfg, sort_keys=False))
            path = root / f"{name}.json"
            path.write_text(json.dumps({"batches": str(root / "batches.pt"), "runs": files, "out": str(root),
                                        **extra}))
            return path

        run_all(job("reference", {"one": finetune_config(spec, hf_dir, root / "one" / "ckpt")}))
        runs = {"dp2": finetune_config(spec, hf_dir, root / "dp2" / "ckpt")}
        if "tp" in self.capabilities:
            # with sequence parallel where the family has it: the same launch checks both
            runs["tp2"] = finetune_config(spec, hf_dir, root / "tp2" / "ckpt", tp=2,
                                          sequence_parallel="sequence_parallel" in self.capabilities)
        if "cp" in self.capabilities:  # context parallel: the text decoder's sequence over both ranks
            runs["cp2"] = finetune_config(spec, hf_dir, root / "cp2" / "ckpt", cp=2)
        if "pp" in self.capabilities:
            runs["pp2"] = finetune_config(spec, hf_dir, root / "pp2" / "ckpt", pp=2,
                                          layers=pipeline_layouts(*depths)["pp2"])
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "mm_core.testing.train_worker",
               str(job("parallel", runs, tp_shards=str(hf_dir) if "tp" in self.capabilities else None))]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert proc.returncode == 0, f"the 2-process launch failed:\n{proc.stderr[-4000:]}"
        return root

    def _matches_one_process(self, root: Path, name: str) -> None:
        ref = json.loads((root / "one" / "records.json").read_text())
        got = json.loads((root / name / "records.json").read_text())
        assert [r["loss"] for r in got] == pytest.approx([r["loss"] for r in ref], rel=RTOL)
        assert [r["grad_norm"] for r in got] == pytest.approx([r["grad_norm"] for r in ref], rel=RTOL)
        want = read_dcp_model(root / "one" / "ckpt" / f"iter_{STEPS:07d}")
        have = read_dcp_model(root / name / "ckpt" / f"iter_{STEPS:07d}")
        assert set(want) <= set(have), sorted(set(want) - set(have))[:5]
        for k, v in want.items():
            torch.testing.assert_close(have[k], v, rtol=RTOL, atol=ATOL, msg=lambda m, k=k: f"{k}: {m}")

    def test_training_step_at_dp2_equals_one_process(self, parallel_runs: Path) -> None:
        self._matches_one_process(parallel_runs, "dp2")

    def test_training_step_at_tp2_equals_one_process(self, parallel_runs: Path) -> None:
        self.require("tp")
        self._matches_one_process(parallel_runs, "tp2")

    def test_training_step_at_pp2_equals_one_process(self, parallel_runs: Path) -> None:
        self.require("pp")
        self._matches_one_process(parallel_runs, "pp2")

    def test_training_step_at_cp2_equals_one_process(self, parallel_runs: Path) -> None:
        self.require("cp")
        self._matches_one_process(parallel_runs, "cp2")

    def test_derived_tp_shards_equal_the_converter(self, parallel_runs: Path) -> None:
        """At tp 2, each rank's shard of every parameter, as the engine's plan (derived from the
        converter's rules) cuts it, equals the converter's piece for that rank, byte for byte."""
        self.require("tp")
        for rank in range(2):
            bad = json.loads((parallel_runs / "tp_shards" / f"rank{rank}.json").read_text())
            assert not bad, f"tp rank {rank}: " + "; ".join(bad[:8])

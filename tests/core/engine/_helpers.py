"""Helpers for engine tests: a tiny toy-model config, in-process and torchrun launches."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).parent
WORKER = HERE / "_worker.py"


def _load_worker():
    spec = importlib.util.spec_from_file_location("engine_test_worker", WORKER)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


worker = _load_worker()


def qwen_tp_plan_available() -> bool:
    return importlib.util.find_spec("mm_qwen") is not None


def model_section(model: str) -> dict:
    """``qwen``: a tiny Qwen2.5-VL (window attention, GQA, mRoPE); ``toy``: the engine's toy model."""
    if model == "qwen":
        from mm_qwen.tiny import tiny_config_dict

        return {"hf_config": tiny_config_dict(vision_depth=2, text_layers=2), "random_init": True}
    from mm_core.testing.toy_model import DEFAULT_CONFIG

    return {"name": "mm_core.testing.toy_model:TOY_SPEC", "hf_config": DEFAULT_CONFIG, "random_init": True}


def base_config(model: str = "qwen", **overrides) -> dict:
    cfg = {
        "model": model_section(model),
        "data": {"source": "synthetic", "synthetic_samples": 32, "synthetic_min_len": 6, "synthetic_max_len": 20},
        "parallel": {"device": "cpu", "pp_pad_multiple": 8},  # pp: several padded lengths in a run
        "training": {"micro_batch_size": 1, "global_batch_size": 4, "seq_length": 32, "train_iters": 3,
                     "lr": 3e-3, "lr_schedule": "constant", "clip_grad": 0.5, "dtype": "fp32",
                     "loss_type": "per_token_loss", "seed": 7,
                     "adam_eps": 1e-4},  # k biases get ~0 gradients: keep Adam from amplifying noise
        "output": {"progress_bar": False, "log_interval": 100},
    }
    for dotted, value in overrides.items():
        section, key = dotted.split(".")
        cfg[section][key] = value
    return cfg


def write_config(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def run_inprocess(tmp: Path, name: str, cfg: dict, *extra: str):
    out = tmp / name
    cfg_file = write_config(tmp / f"{name}.yaml", cfg)
    records = worker.run(["--config", str(cfg_file), *extra], out)
    return records, worker.merged_weights(out)


def run_torchrun(tmp: Path, name: str, nproc: int, cfg: dict, *extra: str, kill_after: int | None = None,
                 timeout: int = 240):
    out = tmp / name
    cfg_file = write_config(tmp / f"{name}.yaml", cfg)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
           str(WORKER), str(out)]
    if kill_after is not None:
        cmd += ["--kill-after", str(kill_after)]
    cmd += ["--config", str(cfg_file), *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    return proc, out


def run_torchrun_many(tmp: Path, nproc: int, runs: dict[str, dict], timeout: int = 400):
    """Several configs, one after the other, in one launch of ``nproc`` processes."""
    items = [f"{name}={write_config(tmp / f'{name}.yaml', cfg)}" for name, cfg in runs.items()]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
           str(WORKER), "--runs", str(tmp), *items]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def read_records(out: Path) -> list[dict]:
    import json

    return json.loads((out / "records.json").read_text())



def load_helpers():
    """This module, loaded by path (tests are not a package under --import-mode=importlib)."""
    return sys.modules[__name__]

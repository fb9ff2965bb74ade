"""Step metrics: console progress bar, JSONL file and TensorBoard, written by global rank 0.

Each run first writes a header record (``run_header.py``), then one record per logged step.
Throughput fields, so that no one compares the wrong ones with another tool's figure:

- ``real_tokens_per_s`` (the headline, shown on the progress bar): non-padding input positions
  per second, what other trainers call tokens/s and what compute scales with;
- ``loss_tokens_per_s``: the positions that carry a label (answer tokens), a fraction of the above;
- ``samples_per_s`` (``samples``: the step's count, which packing changes); each also ``*_per_device`` (over the world size). ``real_tokens`` and
  ``loss_tokens`` are the step's counts.

MoE models add ``tokens_per_expert`` (``{layer: [count per expert]}``, layers x experts numbers:
1,000+ for a large model) and ``expert_load_max`` (the busiest expert over its layer's mean). The
table goes to the JSONL file only; the console line and the progress bar show
``expert_load_max`` and ``tokens_per_expert_min``/``_max`` (the least and most used expert
over all layers) instead, so a step stays one readable line.

MFU is estimated as 6 x trainable-and-frozen parameters x real tokens (forward + backward of a
dense model; frozen parts cost 2/3 of that, ignored here) over the device's peak FLOP/s, when known.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

# dense bf16 peak FLOP/s per device, by a substring of the device name
PEAK_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "A800": 312e12, "H800": 989e12,
              "L40S": 362e12, "910B": 313e12}


def peak_flops(device: torch.device) -> float | None:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    elif device.type == "npu":
        name = torch.npu.get_device_name(device)  # type: ignore[attr-defined]
    else:
        return None
    return next((v for k, v in PEAK_FLOPS.items() if k in name), None)


def peak_memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    if device.type == "npu":
        return torch.npu.max_memory_allocated(device) / 2**30  # type: ignore[attr-defined]
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB (Linux), process RSS
    except ImportError:
        return 0.0


def console_record(record: dict[str, Any]) -> dict[str, Any]:
    """``record`` for one console line: the tokens-per-expert table summed up as its least and most
    used expert, other tables (dicts, lists) left to the JSONL file."""
    out = {k: v for k, v in record.items() if not isinstance(v, (dict, list, tuple))}
    table = record.get("tokens_per_expert")
    counts = [c for row in table.values() for c in row] if isinstance(table, dict) else []
    if counts:
        out["tokens_per_expert_min"], out["tokens_per_expert_max"] = min(counts), max(counts)
    return out


class MetricsLogger:
    """Writes a record every ``log_interval`` steps; only rank 0 writes anything."""

    def __init__(self, *, enabled: bool, total_steps: int, start_step: int, log_interval: int,
                 jsonl: str | None, tensorboard_dir: str | None, progress_bar: bool, world_size: int,
                 header: dict[str, Any] | None = None, notes: Sequence[str] = ()):
        self.enabled, self.log_interval, self.world_size = enabled, log_interval, world_size
        self.jsonl = None
        self.tb = None
        self.bar = None
        if not enabled:
            return
        if jsonl:
            Path(jsonl).parent.mkdir(parents=True, exist_ok=True)
            self.jsonl = open(jsonl, "a")  # earlier runs stay; this run's header marks where it starts
            if header is not None:
                self.jsonl.write(json.dumps(header) + "\n")
                self.jsonl.flush()
        if header is not None:
            resumed = f", resumed from {header['resumed_from']}" if header.get("resumed_from") else ""
            print(f"run {header['run_id']}: config {header['config_hash']}, world size {header['world_size']}, "
                  f"from step {header['start_step']}{resumed}", flush=True)
        for note in notes:  # what the user should know before reading the figures (e.g. packing)
            print(note, flush=True)
        if tensorboard_dir:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(tensorboard_dir)
        if progress_bar:
            from tqdm import tqdm

            self.bar = tqdm(total=total_steps, initial=start_step, desc="finetune", unit="step", dynamic_ncols=True)
        self._t = time.perf_counter()

    def log(self, step: int, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(1)
            moe = {"expert_load_max": f"{record['expert_load_max']:.2f}"} if "expert_load_max" in record else {}
            self.bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}",
                                 **{"real_tok/s": f"{record['real_tokens_per_s']:.0f}"}, **moe)
        if step % self.log_interval and step != 1:
            return
        record = {"step": step, **record}
        if self.jsonl is not None:
            self.jsonl.write(json.dumps(record) + "\n")
            self.jsonl.flush()
        if self.tb is not None:
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)):
                    self.tb.add_scalar(f"train/{k}", v, step)
        if self.bar is None:
            print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                           for k, v in console_record(record).items()), flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.jsonl is not None:
            self.jsonl.close()
        if self.tb is not None:
            self.tb.close()

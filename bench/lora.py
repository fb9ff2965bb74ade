"""LoRA against full fine-tuning on the same small Qwen2.5-VL: step time and memory.

    .venv/bin/python bench/lora.py            # hidden 512, 4+4 layers, seq 1024, one 448x448 image
    .venv/bin/python bench/lora.py --quick    # hidden 256, 2+2 layers, seq 256 (well under a minute)

Each mode trains in its own child process (the engine in one process, AdamW, the same synthetic
data and seed): ``full`` updates every weight, ``lora`` only rank-8 adapters on q/k/v, o, fc1 and
fc2 of every text decoder layer (the vision tower frozen, as usual for LoRA). Reported per mode:
the median step time after the first step, the peak resident memory of the process (on CUDA the
peak allocated device memory too), and the trainable parameters, gradient and optimizer-state
bytes (what LoRA saves by construction). Prints one line and writes JSON (default
bench/results/lora.json).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
LORA = {"rank": 8, "alpha": 16.0, "targets": ["linear_qkv", "linear_proj", "linear_fc1", "linear_fc2"],
        "layers": {"text_decoder": None}}


def setup(quick: bool) -> tuple[dict, dict]:
    from mm_qwen.tiny import tiny_config_dict

    if quick:
        m = dict(hidden=256, heads=4, kv_heads=2, vit_hidden=256, vit_heads=4, vision_depth=2, text_layers=2,
                 fullatt_block_indexes=(1,), window_size=112)
        work, vocab = dict(image_px=112, seq=256, steps=4), 8192
    else:
        m = dict(hidden=512, heads=8, kv_heads=2, vit_hidden=512, vit_heads=8, vision_depth=4, text_layers=4,
                 fullatt_block_indexes=(3,), window_size=112)
        work, vocab = dict(image_px=448, seq=1024, steps=6), 32768
    ids = {"vocab_size": vocab, "image_token_id": vocab - 8, "video_token_id": vocab - 7,
           "vision_start_token_id": vocab - 6, "vision_end_token_id": vocab - 5}
    return tiny_config_dict(vocab=ids, **m), work


def config(hf: dict, work: dict, mode: str, device: str) -> dict:
    image_tokens = (work["image_px"] // 14) ** 2 // 4
    text = work["seq"] - image_tokens - 2
    cfg = {
        "model": {"hf_config": hf, "random_init": True},
        "data": {"source": "synthetic", "synthetic_samples": 64, "synthetic_min_len": text, "synthetic_max_len": text,
                 "synthetic_image_size": work["image_px"], "synthetic_images": 1, "synthetic_text_only_every": 0},
        "parallel": {"device": device},
        "training": {"micro_batch_size": 1, "global_batch_size": 2, "seq_length": work["seq"],
                     "train_iters": work["steps"], "lr": 1e-4, "dtype": "fp32" if device == "cpu" else "bf16",
                     "loss_type": "per_token_loss", "seed": 1},
        "output": {"progress_bar": False, "log_interval": 1000},
    }
    if mode == "lora":
        cfg["lora"] = LORA
    return cfg


def worker(cfg_file: str, result: str) -> None:
    import torch

    from mm_core.engine.config import parse_finetune_config
    from mm_core.engine.trainer import Trainer, shutdown

    trainer = Trainer(parse_finetune_config(["--config", cfg_file]))
    cuda = trainer.par.device.type == "cuda"
    times = []
    try:
        while trainer.step < trainer.total_steps:
            t0 = time.perf_counter()
            trainer.train_step()
            if cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        params = [p for m in trainer.stages.modules for p in m.parameters()]
        trainable = [p for p in params if p.requires_grad]
        state = sum(t.numel() * t.element_size() for o in trainer.optimizers if o is not None
                    for s in o.state.values() for t in s.values() if torch.is_tensor(t))
        out = {"step_s_median": statistics.median(times[1:]), "step_s": times,
               "params": sum(p.numel() for p in params), "trainable_params": sum(p.numel() for p in trainable),
               "grad_mb": sum(p.numel() * p.element_size() for p in trainable) / 2**20,
               "optimizer_state_mb": state / 2**20,
               "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}
        if cuda:
            out["peak_device_gb"] = torch.cuda.max_memory_allocated() / 2**30
        Path(result).write_text(json.dumps(out))
    finally:
        shutdown()


def run_mode(hf: dict, work: dict, mode: str, device: str, tmp: Path, threads: int) -> dict:
    import yaml

    cfg_file = tmp / f"{mode}.yaml"
    cfg_file.write_text(yaml.safe_dump(config(hf, work, mode, device), sort_keys=False))
    result = tmp / f"{mode}.json"
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.run([sys.executable, __file__, "--worker", str(cfg_file), str(result)], capture_output=True,
                          text=True, env=env)
    if proc.returncode:
        raise RuntimeError(f"{mode} run failed:\n{proc.stderr[-3000:]}")
    return json.loads(result.read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(HERE / "results" / "lora.json"))
    ap.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        import torch

        torch.set_num_threads(args.threads)
        worker(*args.worker)
        return
    hf, work = setup(args.quick)
    with tempfile.TemporaryDirectory() as tmp:
        full = run_mode(hf, work, "full", args.device, Path(tmp), args.threads)
        lora = run_mode(hf, work, "lora", args.device, Path(tmp), args.threads)
    mem = "peak_device_gb" if args.device == "cuda" else "peak_rss_gb"
    result = {"quick": args.quick, "device": args.device, "threads": args.threads, "work": work, "lora": LORA,
              "model": {k: hf["text_config"][k] if k in hf.get("text_config", {}) else hf.get(k)
                        for k in ("hidden_size", "num_hidden_layers", "vocab_size")},
              "full": full, "lora_run": lora, "step_time_ratio": lora["step_s_median"] / full["step_s_median"],
              "peak_memory_ratio": lora[mem] / full[mem]}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"lora vs full ({args.device}{', quick' if args.quick else ''}): step {lora['step_s_median']:.3f} s vs "
          f"{full['step_s_median']:.3f} s ({result['step_time_ratio']:.2f}x), {mem} {lora[mem]:.2f} vs "
          f"{full[mem]:.2f} ({result['peak_memory_ratio']:.2f}x), trainable {lora['trainable_params']:,} vs "
          f"{full['trainable_params']:,}, optimizer state {lora['optimizer_state_mb']:.1f} vs "
          f"{full['optimizer_state_mb']:.1f} MB")


if __name__ == "__main__":
    main()

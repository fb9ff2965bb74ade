"""One-GPU training step: the mm engine (with and without FSDP2 at dp=1) vs a transformers loop.

    python bench/gpu_train.py                 # a 3B-shaped slice of Qwen2.5-VL, bf16, seq 4096
    python bench/gpu_train.py --quick         # small model, a few seconds

The model has Qwen2.5-VL-3B's widths (hidden 2048, 16/2 heads, MLP 11008, ViT 1280 wide) and its
real vocabulary (151936), with fewer layers so the comparison runs in minutes. Both sides train the
same synthetic batches (2 images of 448x448 each, one sample per micro-batch, 2 per step) with
fp32 master weights, bf16 compute and AdamW:

- engine, ``parallel.fsdp auto``: one data-parallel rank trains the plain module under autocast;
- engine, ``parallel.fsdp always``: FSDP2 on the single rank with its bf16 parameter cast;
- transformers: ``Qwen2_5_VLForConditionalGeneration`` (sdpa) under autocast, a plain loop.

Tokens/s count every position of the batch (median step of each run, the fastest of ``--repeats``
interleaved runs: one-process steps are partly host-bound, so a busy host spell shows as a slow run);
MFU uses 6 x parameters x tokens. Prints one line and
writes JSON (default bench/results/gpu_train.json). Needs a CUDA device.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent


def model_config(quick: bool) -> tuple[dict, dict]:
    from mm_qwen.tiny import tiny_config_dict

    if quick:
        m = dict(hidden=512, heads=8, kv_heads=2, vit_hidden=512, vit_heads=8, vision_depth=2, text_layers=2,
                 fullatt_block_indexes=(1,), window_size=112)
        work, vocab = dict(image_px=224, images=1, seq=1024, steps=4), 32768
    else:
        m = dict(hidden=2048, heads=16, kv_heads=2, vit_hidden=1280, vit_heads=16, vision_depth=8, text_layers=8,
                 fullatt_block_indexes=(3, 7), window_size=112, intermediate_size=11008)
        work, vocab = dict(image_px=448, images=2, seq=4096, steps=16), 151936
    ids = {"vocab_size": vocab, "image_token_id": vocab - 8, "video_token_id": vocab - 7,
           "vision_start_token_id": vocab - 6, "vision_end_token_id": vocab - 5}
    cfg = tiny_config_dict(vocab=ids, **m)
    if not quick:
        cfg["vision_config"]["intermediate_size"] = 3420
    return cfg, work


def engine_config(hf: dict, work: dict, out: Path, fsdp: str, compile: bool = False, recompute: bool = False) -> dict:
    image_tokens = work["images"] * (work["image_px"] // 14) ** 2 // 4
    text = work["seq"] - image_tokens - 2 * work["images"]
    return {
        "model": {"hf_config": hf, "random_init": True},
        "data": {"source": "synthetic", "synthetic_samples": 64, "synthetic_min_len": text, "synthetic_max_len": text,
                 "synthetic_image_size": work["image_px"], "synthetic_images": work["images"],
                 "synthetic_text_only_every": 0},
        "parallel": {"device": "cuda", "fsdp": fsdp},
        "training": {"micro_batch_size": 1, "global_batch_size": 2, "seq_length": work["seq"],
                     "train_iters": work["steps"] + 2, "lr": 1e-4, "dtype": "bf16", "loss_type": "per_token_loss",
                     "compute_mode": "chunk", "chunk_size": 4096, "compile": compile,
                     "recompute": "full" if recompute else "none"},
        "output": {"progress_bar": False, "log_interval": 1000, "metrics_file": str(out / f"metrics_{fsdp}.jsonl")},
    }


def run_engine(hf: dict, work: dict, tmp: Path, fsdp: str, compile: bool = False, recompute: bool = False) -> dict:
    import yaml

    from mm_core.engine.config import parse_finetune_config
    from mm_core.engine.trainer import Trainer, shutdown

    cfg_file = tmp / f"engine_{fsdp}{'_compiled' if compile else ''}{'_recompute' if recompute else ''}.yaml"
    cfg_file.write_text(yaml.safe_dump(engine_config(hf, work, tmp, fsdp, compile, recompute)))
    torch.cuda.reset_peak_memory_stats()
    trainer = Trainer(parse_finetune_config(["--config", str(cfg_file)]))
    try:
        records = [trainer.train_step() for _ in range(trainer.total_steps)][2:]  # 2 warm-up steps
        n_params = trainer.n_params
    finally:
        shutdown()
        del trainer
        torch.cuda.empty_cache()
    step = statistics.median(r["step_time_s"] for r in records)
    tokens = 2 * work["seq"]
    return {"step_s": step, "tokens_per_s": tokens / step, "mfu": statistics.median(r.get("mfu", 0) for r in records),
            "peak_memory_gb": max(r["peak_memory_gb"] for r in records), "loss": records[-1]["loss"],
            "params": n_params}


def run_transformers(hf: dict, work: dict, tmp: Path) -> dict:
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from mm_core.engine.config import parse_finetune_config, validate
    from mm_core.engine.data import SyntheticData

    torch.manual_seed(0)
    model = Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig.from_dict(hf)).cuda().train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    cfg = parse_finetune_config(["--config", str(tmp / "engine_auto.yaml")])
    data = SyntheticData(cfg, validate(cfg, 1, hf), 0, hf)  # one process: all micro-batches of a step
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(work["steps"] + 2):
        window = [{k: v.cuda() if isinstance(v, torch.Tensor) else v for k, v in mb.items()}
                  for mb in data.next_window()]
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for mb in window:
            ids = mb["input_ids"]
            with torch.autocast("cuda", dtype=torch.bfloat16):
                out = model(input_ids=ids, attention_mask=mb["attention_mask"], pixel_values=mb["pixel_values"],
                            image_grid_thw=mb["image_grid_thw"], mm_token_type_ids=(ids == hf["image_token_id"]).int(),
                            labels=mb["labels"])
            (out.loss / len(window)).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    step = statistics.median(times[2:])
    peak = torch.cuda.max_memory_allocated() / 2**30
    del model, opt
    torch.cuda.empty_cache()
    return {"step_s": step, "tokens_per_s": 2 * work["seq"] / step, "peak_memory_gb": peak}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--repeats", type=int, default=2, help="runs of each side; the fastest counts")
    p.add_argument("--engine-only", action="store_true", help="only the engine (with --compile / --recompute)")
    p.add_argument("--compile", action="store_true", help="--engine-only: training.compile true")
    p.add_argument("--recompute", action="store_true", help="--engine-only: training.recompute full")
    p.add_argument("--out", default=str(HERE / "results" / "gpu_train.json"))
    args = p.parse_args()
    if not torch.cuda.is_available():
        print("gpu_train: no CUDA device visible")
        return 1
    hf, work = model_config(args.quick)
    if args.engine_only:  # the default engine with training.compile and/or recompute, alone
        with tempfile.TemporaryDirectory() as tmp:
            res = run_engine(hf, work, Path(tmp), "auto", compile=args.compile, recompute=args.recompute)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"device": torch.cuda.get_device_name(), "compile": args.compile,
                                              "recompute": args.recompute, "engine": res}, indent=1))
        print(f"gpu_train --engine-only [{torch.cuda.get_device_name()} compile={args.compile} "
              f"recompute={args.recompute}]: {res['tokens_per_s']:.0f} tok/s (MFU {100 * res['mfu']:.1f}%, "
              f"{res['peak_memory_gb']:.1f} GB) -> {args.out}")
        return 0
    runs: dict[str, list[dict]] = {"auto": [], "always": [], "transformers": []}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeats):  # interleaved: a slow spell of the host hits every side
            runs["auto"].append(run_engine(hf, work, Path(tmp), "auto"))
            runs["always"].append(run_engine(hf, work, Path(tmp), "always"))
            runs["transformers"].append(run_transformers(hf, work, Path(tmp)))
    auto, always, ref = (max(runs[k], key=lambda r: r["tokens_per_s"]) for k in ("auto", "always", "transformers"))
    summary = {"device": torch.cuda.get_device_name(), "model": hf, "workload": work, "engine_auto": auto,
               "engine_fsdp": always, "transformers": ref,
               "all_runs_tokens_per_s": {k: [r["tokens_per_s"] for r in v] for k, v in runs.items()},
               "speedup_vs_transformers": auto["tokens_per_s"] / ref["tokens_per_s"],
               "speedup_vs_fsdp_at_dp1": auto["tokens_per_s"] / always["tokens_per_s"],
               "memory_ratio_vs_transformers": auto["peak_memory_gb"] / ref["peak_memory_gb"]}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(summary, indent=1))
    print(f"gpu_train [{summary['device']} bf16 {auto['params'] / 1e9:.2f}B params seq {work['seq']}]: engine "
          f"{auto['tokens_per_s']:.0f} tok/s (MFU {100 * auto['mfu']:.1f}%, {auto['peak_memory_gb']:.1f} GB) vs "
          f"FSDP2 at dp=1 {always['tokens_per_s']:.0f} tok/s ({always['peak_memory_gb']:.1f} GB) vs transformers "
          f"{ref['tokens_per_s']:.0f} tok/s ({ref['peak_memory_gb']:.1f} GB): x{summary['speedup_vs_transformers']:.2f}"
          f" -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

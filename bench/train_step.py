"""Training-step throughput of the mm engine vs a plain transformers loop, and chunked-CE memory.

    .venv/bin/python bench/train_step.py            # hidden 512, 4+4 layers, seq 2048, 2 images 448x448
    .venv/bin/python bench/train_step.py --quick    # a small run (about a minute)

1. Throughput: the same Qwen2.5-VL-shaped model and the same global batch (2 samples) trained
   (a) by the engine in 2 CPU processes (torchrun, dp=2, FSDP2, 1 thread each, chunked CE) and
   (b) by ``transformers.Qwen2_5_VLForConditionalGeneration`` in a plain loop in 1 process with 2
   threads (accumulating the 2 samples), both fp32 with AdamW. Tokens/s count every position of the
   batch. On a shared CPU, wall time is inflated by other processes, so tokens/s are also given from
   CPU time (process CPU seconds per step / threads) and the ratio uses those.
2. Memory: peak RSS growth of one fp32 forward+backward of cross entropy at vocabulary 151936 and
   8192 tokens (hidden 512), full logits vs ``compute_mode: chunk`` (1024-token chunks), each in its
   own child process (``--quick``: 2048 tokens, 256-token chunks).
   The full mode is measured at 2048 tokens (``--ce-full-tokens``; 512 with ``--quick``) and scaled
   linearly to the token count (the logits dominate), so a small shared machine is never pushed to ~15 GB.

Prints a one-line summary and writes JSON (default bench/results/train_step.json).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
VOCAB_CE, TOKENS_CE, HIDDEN_CE = 151936, 8192, 512


def model_config(quick: bool) -> tuple[dict, dict]:
    from mm_qwen.tiny import tiny_config_dict

    if quick:
        m = dict(hidden=256, heads=4, kv_heads=2, vit_hidden=256, vit_heads=4, vision_depth=2, text_layers=2,
                 fullatt_block_indexes=(1,), window_size=112)
        work = dict(image_px=224, images=1, seq=512, steps=3)
        vocab = 8192
    else:
        m = dict(hidden=512, heads=8, kv_heads=2, vit_hidden=512, vit_heads=8, vision_depth=4, text_layers=4,
                 fullatt_block_indexes=(3,), window_size=112)
        work = dict(image_px=448, images=2, seq=2048, steps=4)
        vocab = 32768
    ids = {"vocab_size": vocab, "image_token_id": vocab - 8, "video_token_id": vocab - 7,
           "vision_start_token_id": vocab - 6, "vision_end_token_id": vocab - 5}
    return tiny_config_dict(vocab=ids, **m), work


def engine_config(hf: dict, work: dict, out: Path) -> dict:
    image_tokens = work["images"] * (work["image_px"] // 14) ** 2 // 4
    text = work["seq"] - image_tokens - 2 * work["images"]  # + <vision_start>/<vision_end> per image
    return {
        "model": {"hf_config": hf, "random_init": True},
        "data": {"source": "synthetic", "synthetic_samples": 64, "synthetic_min_len": text, "synthetic_max_len": text,
                 "synthetic_image_size": work["image_px"], "synthetic_images": work["images"],
                 "synthetic_text_only_every": 0},
        "parallel": {"device": "cpu"},
        "training": {"micro_batch_size": 1, "global_batch_size": 2, "seq_length": work["seq"],
                     "train_iters": work["steps"] + 1, "lr": 1e-4, "dtype": "fp32", "loss_type": "per_token_loss",
                     "compute_mode": "chunk", "chunk_size": 1024},
        "output": {"progress_bar": False, "log_interval": 1000, "metrics_file": str(out / "metrics.jsonl")},
    }


# -- engine worker (run under torchrun) --------------------------------------------------------------

def engine_worker(cfg_file: str, result: str) -> None:
    torch.set_num_threads(1)
    from mm_core.engine.config import parse_finetune_config
    from mm_core.engine.trainer import Trainer, shutdown

    trainer = Trainer(parse_finetune_config(["--config", cfg_file]))
    rows = []
    try:
        while trainer.step < trainer.total_steps:
            c0, w0 = time.process_time(), time.perf_counter()
            trainer.train_step()
            rows.append({"cpu_s": time.process_time() - c0, "wall_s": time.perf_counter() - w0})
        if trainer.par.rank == 0:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
            Path(result).write_text(json.dumps({"steps": rows, "peak_rss_gb": peak}))
    finally:
        shutdown()


def run_engine(hf: dict, work: dict, tmp: Path) -> dict:
    import yaml

    cfg_file = tmp / "engine.yaml"
    cfg_file.write_text(yaml.safe_dump(engine_config(hf, work, tmp)))
    result = tmp / "engine.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", __file__,
           "--engine-worker", str(cfg_file), str(result)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode:
        raise RuntimeError(f"engine run failed:\n{proc.stderr[-3000:]}")
    data = json.loads(result.read_text())
    steps = data["steps"][1:]  # the first step warms up
    tokens = 2 * work["seq"]
    cpu = min(s["cpu_s"] for s in steps)  # per process, 1 thread each: CPU time ~ busy time
    wall = min(s["wall_s"] for s in steps)
    return {"tokens_per_s_wall": tokens / wall, "tokens_per_s_cpu": tokens / cpu,
            "step_wall_s": wall, "step_cpu_s_per_process": cpu, "peak_rss_gb_rank0": data["peak_rss_gb"]}


# -- transformers baseline (child process) ------------------------------------------------------------

def hf_worker(hf_file: str, work_file: str, result: str) -> None:
    torch.set_num_threads(2)
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from mm_core.engine.config import parse_finetune_config, validate
    from mm_core.engine.data import SyntheticData

    hf, work = json.loads(Path(hf_file).read_text()), json.loads(Path(work_file).read_text())
    torch.manual_seed(0)
    model = Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig.from_dict(hf)).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    cfg = parse_finetune_config(["--config", str(Path(result).with_name("engine.yaml"))])
    data = SyntheticData(cfg, validate(cfg, 1, hf), 0, hf)  # one process: all micro-batches of a step
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rows = []
    for _ in range(work["steps"] + 1):
        window = data.next_window()
        c0, w0 = time.process_time(), time.perf_counter()
        for mb in window:
            ids = mb["input_ids"]
            mm_types = (ids == hf["image_token_id"]).int()
            out = model(input_ids=ids, attention_mask=mb["attention_mask"], pixel_values=mb["pixel_values"],
                        image_grid_thw=mb["image_grid_thw"], mm_token_type_ids=mm_types, labels=mb["labels"])
            (out.loss / len(window)).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        rows.append({"cpu_s": (time.process_time() - c0) / 2, "wall_s": time.perf_counter() - w0})
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    Path(result).write_text(json.dumps({"steps": rows, "peak_rss_gb": peak / 2**20,
                                        "growth_gb": (peak - base) / 2**20}))


def run_hf(hf: dict, work: dict, tmp: Path) -> dict:
    (tmp / "hf.json").write_text(json.dumps(hf))
    (tmp / "work.json").write_text(json.dumps(work))
    result = tmp / "hf_result.json"
    proc = subprocess.run([sys.executable, __file__, "--hf-worker", str(tmp / "hf.json"), str(tmp / "work.json"),
                           str(result)], capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "2"})
    if proc.returncode:
        raise RuntimeError(f"transformers run failed:\n{proc.stderr[-3000:]}")
    data = json.loads(result.read_text())
    steps = data["steps"][1:]
    tokens = 2 * work["seq"]
    cpu = min(s["cpu_s"] for s in steps)
    wall = min(s["wall_s"] for s in steps)
    return {"tokens_per_s_wall": tokens / wall, "tokens_per_s_cpu": tokens / cpu, "step_wall_s": wall,
            "step_cpu_s_per_thread": cpu, "peak_rss_gb": data["peak_rss_gb"]}


# -- cross-entropy memory (child process per measurement) ---------------------------------------------

def ce_worker(mode: str, tokens: int, chunk: int, result: str) -> None:
    torch.set_num_threads(2)
    from mm_core.losses.cross_entropy import weighted_ce_sum

    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(tokens, HIDDEN_CE, generator=g).requires_grad_()
    head = (torch.randn(VOCAB_CE, HIDDEN_CE, generator=g) * 0.02).requires_grad_()
    targets = torch.randint(0, VOCAB_CE, (tokens,), generator=g)
    weights = torch.ones(tokens)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    loss = weighted_ce_sum(hidden, head, targets, weights, compute_mode=mode, chunk_size=chunk)
    loss.backward()
    dt = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    Path(result).write_text(json.dumps({"growth_gb": (peak - base) / 2**20, "seconds": dt, "loss": float(loss)}))


def run_ce(mode: str, tokens: int, chunk: int, tmp: Path) -> dict:
    result = tmp / f"ce_{mode}_{tokens}.json"
    proc = subprocess.run([sys.executable, __file__, "--ce-worker", mode, str(tokens), str(chunk), str(result)],
                          capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"CE {mode} run failed:\n{proc.stderr[-3000:]}")
    return json.loads(result.read_text())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--ce-full-tokens", type=int, default=None,
                   help="tokens for the full-logits CE measurement (scaled up); default 2048, --quick 512")
    p.add_argument("--out", default=str(HERE / "results" / "train_step.json"))
    args = p.parse_args()
    hf, work = model_config(args.quick)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        engine = run_engine(hf, work, tmp)
        base = run_hf(hf, work, tmp)
        tokens = 2048 if args.quick else TOKENS_CE
        chunk_size = 256 if args.quick else 1024
        full_tokens = args.ce_full_tokens or (512 if args.quick else 2048)
        full = run_ce("default", full_tokens, chunk_size, tmp)
        chunk = run_ce("chunk", tokens, chunk_size, tmp)
    full_scaled = full["growth_gb"] * tokens / full_tokens
    res = {
        "config": {"quick": args.quick, **work, "hidden": hf["text_config"]["hidden_size"],
                   "vocab": hf["text_config"]["vocab_size"], "global_batch": 2},
        "engine_2proc": engine, "transformers_loop": base,
        "throughput_ratio_cpu": engine["tokens_per_s_cpu"] / base["tokens_per_s_cpu"],
        "throughput_ratio_wall": engine["tokens_per_s_wall"] / base["tokens_per_s_wall"],
        "ce_memory": {"vocab": VOCAB_CE, "tokens": tokens, "hidden": HIDDEN_CE, "dtype": "fp32",
                      "chunk_size": chunk_size, "full_measured_tokens": full_tokens,
                      "full_growth_gb_measured": full["growth_gb"], "full_growth_gb_scaled": full_scaled,
                      "chunk_growth_gb": chunk["growth_gb"],
                      "chunk_over_full": chunk["growth_gb"] / full_scaled,
                      "full_seconds": full["seconds"], "chunk_seconds": chunk["seconds"]},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2))
    print(f"train_step: engine 2 procs {engine['tokens_per_s_cpu']:.0f} tok/s (cpu) / {engine['tokens_per_s_wall']:.0f} "
          f"(wall), transformers loop {base['tokens_per_s_cpu']:.0f} / {base['tokens_per_s_wall']:.0f}; ratio "
          f"{res['throughput_ratio_cpu']:.2f} (cpu) {res['throughput_ratio_wall']:.2f} (wall); peak RSS "
          f"{engine['peak_rss_gb_rank0']:.2f} GB/rank vs {base['peak_rss_gb']:.2f} GB; CE at V={VOCAB_CE}, "
          f"T={tokens}: chunk {chunk['growth_gb']:.2f} GB vs full {full_scaled:.2f} GB "
          f"({100 * res['ce_memory']['chunk_over_full']:.0f}%) -> {args.out}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--engine-worker":
        engine_worker(sys.argv[2], sys.argv[3])
    elif len(sys.argv) > 1 and sys.argv[1] == "--hf-worker":
        hf_worker(sys.argv[2], sys.argv[3], sys.argv[4])
    elif len(sys.argv) > 1 and sys.argv[1] == "--ce-worker":
        ce_worker(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5])
    else:
        main()

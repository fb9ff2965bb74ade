"""Training-step throughput of the mm engine vs a plain transformers loop, and chunked-CE memory.

    .venv/bin/python bench/train_step.py            # hidden 512, 4+4 layers, seq 2048, 2 images 448x448
    .venv/bin/python bench/train_step.py --quick    # a small run (about a minute)

1. Throughput: the same Qwen2.5-VL-shaped model and the same global batch (2 samples, fp32, AdamW)
   trained with 2 CPU threads in all on each side:
   (a) the engine in 1 process with 2 threads (micro-batch 1, accumulating 2; chunked CE);
   (b) ``transformers.Qwen2_5_VLForConditionalGeneration`` in a plain loop in 1 process with 2 threads,
       both ways: accumulating 2 micro-batches of 1, and one micro-batch of 2; the faster is the baseline;
   (c) the engine at dp=2: 2 processes (torchrun, FSDP2) x 1 thread, the same 2 threads but split
       across processes, so it is reported but not the headline.
   Tokens/s are real (non-padding) input tokens per second of wall clock, the engine's
   ``real_tokens_per_s``; the answer tokens are ``loss_tokens_per_s``. The headline ratio is (a) over
   the best of (b), wall clock at equal threads. CPU-time rates (process CPU seconds / threads) are
   kept in the JSON as a check on load from other jobs, never as the ratio.
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

def engine_worker(cfg_file: str, result: str, threads: int) -> None:
    torch.set_num_threads(threads)
    from mm_core.engine.config import parse_finetune_config
    from mm_core.engine.trainer import Trainer, shutdown

    trainer = Trainer(parse_finetune_config(["--config", cfg_file]))
    rows = []
    try:
        while trainer.step < trainer.total_steps:
            c0, w0 = time.process_time(), time.perf_counter()
            rec = trainer.train_step()
            rows.append({"cpu_s": (time.process_time() - c0) / threads, "wall_s": time.perf_counter() - w0,
                         "real_tokens": rec["real_tokens"], "loss_tokens": rec["loss_tokens"]})
        if trainer.par.rank == 0:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
            Path(result).write_text(json.dumps({"steps": rows, "peak_rss_gb": peak}))
    finally:
        shutdown()


def rates(steps: list[dict], processes: int, threads: int) -> dict:
    """Per-step figures of the fastest step after the first (warm-up); tokens/s on the wall clock."""
    best = min(steps[1:], key=lambda s: s["wall_s"])
    wall = best["wall_s"]
    return {"processes": processes, "threads_per_process": threads, "step_wall_s": wall,
            "real_tokens": best["real_tokens"], "loss_tokens": best["loss_tokens"],
            "real_tokens_per_s": best["real_tokens"] / wall, "loss_tokens_per_s": best["loss_tokens"] / wall,
            "step_cpu_s_per_thread": best["cpu_s"], "real_tokens_per_s_cpu": best["real_tokens"] / best["cpu_s"]}


def run_engine(hf: dict, work: dict, tmp: Path, processes: int, threads: int) -> dict:
    import yaml

    cfg_file = tmp / "engine.yaml"
    cfg_file.write_text(yaml.safe_dump(engine_config(hf, work, tmp)))
    result = tmp / f"engine_{processes}x{threads}.json"
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes),
           __file__, "--engine-worker", str(cfg_file), str(result), str(threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode:
        raise RuntimeError(f"engine run failed:\n{proc.stderr[-3000:]}")
    data = json.loads(result.read_text())
    return {**rates(data["steps"], processes, threads), "peak_rss_gb_rank0": data["peak_rss_gb"]}


# -- transformers baseline (child process) ------------------------------------------------------------

def hf_worker(hf_file: str, work_file: str, result: str, micro: int) -> None:
    torch.set_num_threads(2)
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from mm_core.engine.config import parse_finetune_config, validate
    from mm_core.engine.data import SyntheticData

    hf, work = json.loads(Path(hf_file).read_text()), json.loads(Path(work_file).read_text())
    torch.manual_seed(0)
    model = Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig.from_dict(hf)).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    cfg = parse_finetune_config(["--config", str(Path(result).with_name("engine.yaml")),
                                 f"--training.micro_batch_size={micro}"])
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
        rows.append({"cpu_s": (time.process_time() - c0) / 2, "wall_s": time.perf_counter() - w0,
                     "real_tokens": int(sum(mb["attention_mask"].sum() for mb in window)),  # as the engine counts
                     "loss_tokens": int(sum((mb["labels"][:, 1:] != -100).sum() for mb in window))})
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    Path(result).write_text(json.dumps({"steps": rows, "peak_rss_gb": peak / 2**20,
                                        "growth_gb": (peak - base) / 2**20}))


def run_hf(hf: dict, work: dict, tmp: Path, micro: int) -> dict:
    """The transformers loop in 1 process x 2 threads, micro-batches of ``micro`` samples (engine.yaml's data)."""
    (tmp / "hf.json").write_text(json.dumps(hf))
    (tmp / "work.json").write_text(json.dumps(work))
    result = tmp / f"hf_result_mb{micro}.json"
    proc = subprocess.run([sys.executable, __file__, "--hf-worker", str(tmp / "hf.json"), str(tmp / "work.json"),
                           str(result), str(micro)], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "2"})
    if proc.returncode:
        raise RuntimeError(f"transformers run failed:\n{proc.stderr[-3000:]}")
    data = json.loads(result.read_text())
    return {**rates(data["steps"], 1, 2), "micro_batch_size": micro, "peak_rss_gb": data["peak_rss_gb"]}


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


def throughput(hf: dict, work: dict, tmp: Path) -> dict:
    """Every side at 2 threads in all; the headline is the 1-process engine over the best 1-process loop."""
    engine_1 = run_engine(hf, work, tmp, processes=1, threads=2)
    engine_dp2 = run_engine(hf, work, tmp, processes=2, threads=1)
    loops = {f"transformers_mb{m}": run_hf(hf, work, tmp, micro=m) for m in (1, 2)}
    best = max(loops, key=lambda k: loops[k]["real_tokens_per_s"])
    tf = loops[best]
    return {"basis": "real (non-padding) input tokens per second of wall clock, 2 threads on every side",
            "engine_1proc_2threads": engine_1, "engine_dp2_2proc_1thread": engine_dp2, **loops,
            "transformers_best": best,
            "ratio_engine_1proc_vs_transformers_best": engine_1["real_tokens_per_s"] / tf["real_tokens_per_s"],
            "ratio_engine_dp2_vs_transformers_best": engine_dp2["real_tokens_per_s"] / tf["real_tokens_per_s"],
            "ratio_cpu_time_engine_1proc_vs_transformers_best":
                engine_1["real_tokens_per_s_cpu"] / tf["real_tokens_per_s_cpu"]}


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
        speed = throughput(hf, work, tmp)
        tokens = 2048 if args.quick else TOKENS_CE
        chunk_size = 256 if args.quick else 1024
        full_tokens = args.ce_full_tokens or (512 if args.quick else 2048)
        full = run_ce("default", full_tokens, chunk_size, tmp)
        chunk = run_ce("chunk", tokens, chunk_size, tmp)
    full_scaled = full["growth_gb"] * tokens / full_tokens
    res = {
        "config": {"quick": args.quick, **work, "hidden": hf["text_config"]["hidden_size"],
                   "vocab": hf["text_config"]["vocab_size"], "global_batch": 2},
        "throughput": speed,
        "ce_memory": {"vocab": VOCAB_CE, "tokens": tokens, "hidden": HIDDEN_CE, "dtype": "fp32",
                      "chunk_size": chunk_size, "full_measured_tokens": full_tokens,
                      "full_growth_gb_measured": full["growth_gb"], "full_growth_gb_scaled": full_scaled,
                      "full_extrapolated": full_tokens != tokens,
                      "chunk_growth_gb": chunk["growth_gb"],
                      "chunk_over_full": chunk["growth_gb"] / full_scaled,
                      "full_seconds": full["seconds"], "chunk_seconds": chunk["seconds"]},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2))
    e1, e2 = speed["engine_1proc_2threads"], speed["engine_dp2_2proc_1thread"]
    tf = speed[speed["transformers_best"]]
    print(f"train_step (real tokens/s, wall, 2 threads each): engine 1 proc x 2 threads {e1['real_tokens_per_s']:.0f}, "
          f"dp=2 2 procs x 1 thread {e2['real_tokens_per_s']:.0f}, transformers best ({speed['transformers_best']}) "
          f"{tf['real_tokens_per_s']:.0f}; ratio {speed['ratio_engine_1proc_vs_transformers_best']:.2f} (1 proc), "
          f"{speed['ratio_engine_dp2_vs_transformers_best']:.2f} (dp=2); peak RSS {e1['peak_rss_gb_rank0']:.2f} GB vs "
          f"{tf['peak_rss_gb']:.2f} GB; CE at V={VOCAB_CE}, T={tokens}: chunk {chunk['growth_gb']:.2f} GB vs full "
          f"{full_scaled:.2f} GB (extrapolated from {full_tokens} tokens: {full['growth_gb']:.2f} GB) "
          f"({100 * res['ce_memory']['chunk_over_full']:.0f}%) -> {args.out}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--engine-worker":
        engine_worker(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    elif len(sys.argv) > 1 and sys.argv[1] == "--hf-worker":
        hf_worker(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]))
    elif len(sys.argv) > 1 and sys.argv[1] == "--ce-worker":
        ce_worker(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5])
    else:
        main()

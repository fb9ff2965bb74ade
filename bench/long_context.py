"""Peak memory per rank for one long sample with context parallel 1 vs 2 (CPU, small Qwen2.5-VL).

    .venv/bin/python bench/long_context.py            # one 32768-token sample (with a 112 px image)
    .venv/bin/python bench/long_context.py --quick    # one 4096-token sample (well under a minute)

Each cp size trains 2 steps on the same sample in its own torchrun launch (cp ranks = processes,
gloo, fp32, one micro-batch, chunked cross entropy so the logits do not dominate). Reported per
rank: the peak resident memory of the process (``ru_maxrss``) and, for the second step (the
optimizer state exists by then), the resident memory before it and its peak during it, sampled
every 2 ms: their difference is what the sequence costs (activations and transients), what cp
splits. Prints one line and writes JSON (default bench/results/long_context.json).
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

from rss import sampled_rss

HERE = Path(__file__).resolve().parent
IMAGE_PX = 112  # 8 x 8 patches -> 16 image tokens (+ vision start/end)


def model_config() -> dict:
    from mm_qwen.tiny import tiny_config_dict

    vocab = 8192
    ids = {"vocab_size": vocab, "image_token_id": vocab - 8, "video_token_id": vocab - 7,
           "vision_start_token_id": vocab - 6, "vision_end_token_id": vocab - 5}
    return tiny_config_dict(vocab=ids, hidden=256, heads=4, kv_heads=2, vit_hidden=128, vit_heads=2, vision_depth=2,
                            text_layers=2, fullatt_block_indexes=(1,), window_size=112, max_position_embeddings=65536)


def config(hf: dict, seq: int, cp: int) -> dict:
    text = seq - (IMAGE_PX // 14) ** 2 // 4 - 2  # the sample is exactly `seq` tokens: no cp padding
    return {
        "model": {"hf_config": hf, "random_init": True},
        "data": {"source": "synthetic", "synthetic_samples": 4, "synthetic_min_len": text, "synthetic_max_len": text,
                 "synthetic_image_size": IMAGE_PX, "synthetic_images": 1, "synthetic_text_only_every": 0},
        "parallel": {"device": "cpu", "cp": cp},
        "training": {"micro_batch_size": 1, "global_batch_size": 1, "seq_length": seq, "train_iters": 2,
                     "lr": 1e-4, "dtype": "fp32", "loss_type": "per_token_loss", "seed": 1,
                     "compute_mode": "chunk", "chunk_size": 1024},
        "output": {"progress_bar": False, "log_interval": 1000},
    }


def worker(cfg_file: str, result_prefix: str) -> None:
    from mm_core.engine.config import parse_finetune_config
    from mm_core.engine.trainer import Trainer, shutdown

    trainer = Trainer(parse_finetune_config(["--config", cfg_file]))
    try:
        t0 = time.perf_counter()
        losses = [trainer.train_step()["loss"]]  # creates the optimizer state
        first = time.perf_counter() - t0
        with sampled_rss() as rss:
            t0 = time.perf_counter()
            losses.append(trainer.train_step()["loss"])
            second = time.perf_counter() - t0
        before = rss.before
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        out = {"rank": trainer.par.rank, "peak_rss_gb": peak, "step2_rss_before_gb": before,
               "step2_peak_rss_gb": rss.peak, "sequence_gb": rss.peak - before, "losses": losses,
               "step_seconds": [first, second]}
        Path(f"{result_prefix}{trainer.par.rank}.json").write_text(json.dumps(out))
    finally:
        shutdown()


def run_cp(hf: dict, seq: int, cp: int, tmp: Path, threads: int) -> list[dict]:
    import yaml

    cfg_file = tmp / f"cp{cp}.yaml"
    cfg_file.write_text(yaml.safe_dump(config(hf, seq, cp), sort_keys=False))
    prefix = str(tmp / f"cp{cp}_rank")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(cp), __file__,
           "--worker", str(cfg_file), prefix]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    if proc.returncode:
        raise RuntimeError(f"cp {cp} run failed:\n{proc.stderr[-3000:]}")
    return [json.loads(Path(f"{prefix}{r}.json").read_text()) for r in range(cp)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="4096 tokens instead of 32768")
    ap.add_argument("--seq", type=int, default=None, help="tokens of the sample (a multiple of 4)")
    ap.add_argument("--threads", type=int, default=1, help="threads per rank")
    ap.add_argument("--out", default=str(HERE / "results" / "long_context.json"))
    ap.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        import torch

        torch.set_num_threads(args.threads)
        worker(*args.worker)
        return
    seq = args.seq or (4096 if args.quick else 32768)
    hf = model_config()
    with tempfile.TemporaryDirectory() as tmp:
        runs = {cp: run_cp(hf, seq, cp, Path(tmp), args.threads) for cp in (1, 2)}
    per_rank = {cp: max(r["peak_rss_gb"] for r in ranks) for cp, ranks in runs.items()}
    sequence = {cp: max(r["sequence_gb"] for r in ranks) for cp, ranks in runs.items()}
    result = {"quick": args.quick, "seq": seq, "threads_per_rank": args.threads,
              "model": {k: hf["text_config"][k] for k in ("hidden_size", "num_hidden_layers", "vocab_size")},
              "cp1": runs[1], "cp2": runs[2], "peak_rss_gb_per_rank": per_rank, "sequence_gb_per_rank": sequence,
              "losses_equal": bool(abs(runs[1][0]["losses"][-1] - runs[2][0]["losses"][-1])
                                   <= 1e-4 * abs(runs[1][0]["losses"][-1]))}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"long context ({seq} tokens, cpu{', quick' if args.quick else ''}): peak RSS per rank cp1 "
          f"{per_rank[1]:.2f} GB vs cp2 {per_rank[2]:.2f} GB; sequence share {sequence[1]:.2f} vs {sequence[2]:.2f} GB "
          f"({sequence[2] / max(sequence[1], 1e-9):.2f}x); last loss equal: {result['losses_equal']}")


if __name__ == "__main__":
    main()

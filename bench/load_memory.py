"""Host memory per rank while the engine loads a GLM-4.5V-shaped checkpoint sharded (issue 17).

    .venv/bin/python bench/load_memory.py            # real widths, 1 dense + 1 MoE layer (~5.6 GB bf16 on disk)
    .venv/bin/python bench/load_memory.py --quick    # 16 experts, vocabulary 4096 (well under a minute)
    .venv/bin/python bench/load_memory.py --moe-layers 2   # the issue's 1 dense + 2 MoE (~10 GB on disk)

Writes a random HF safetensors checkpoint with GLM-4.5V's text widths (hidden 4096, 128 routed
experts of 1408 plus a shared one, top 8, heads 96 / kv 8, head_dim 128, dense intermediate
10944) but few layers, a reduced vocabulary (16384, not 151552: the embedding and head would
otherwise be most of a 3-layer model) and a one-block vision tower (its real widths: hidden 1536,
12 heads). Names and shapes come from transformers' own ``Glm4vMoeForConditionalGeneration``
built on the meta device, experts written per expert as the Hub does. Then one torchrun launch of
4 processes (gloo, CPU) builds the engine's stage with ``parallel.ep 4`` (= dp 4, FSDP2) from
that directory, and each rank reports its peak resident memory while loading (sampled every
2 ms, and ``ru_maxrss``), its resident memory before loading, and the fp32 bytes of the
parameters it holds, next to the model's fp32 bytes divided by the world size. Prints one line
and writes JSON (default bench/results/load_memory.json).
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
WORLD = 4


def model_config(quick: bool, moe_layers: int) -> dict:
    from mm_glm.tiny_moe import tiny_moe_config_dict

    cfg = tiny_moe_config_dict(experts=16 if quick else 128, top_k=8, moe_intermediate=1408, dense_layers=1,
                               text_layers=1 + moe_layers, hidden=4096, heads=96, kv_heads=8, vision_depth=1,
                               vit_hidden=1536, vit_heads=12, intermediate_size=10944)
    cfg["text_config"].update(head_dim=128, vocab_size=4096 if quick else 16384)
    cfg["text_config"]["rope_parameters"]["mrope_section"] = [8, 12, 12]  # GLM-4.5V's (rotary dim 64)
    cfg["vision_config"].update(intermediate_size=10944)
    return cfg


def hf_shapes(cfg: dict) -> dict[str, tuple[tuple[int, ...], object]]:
    """The Hub's tensor names and shapes (bf16), experts one by one."""
    import re

    import torch
    from transformers import Glm4vMoeConfig, Glm4vMoeForConditionalGeneration

    with torch.device("meta"):
        model = Glm4vMoeForConditionalGeneration(Glm4vMoeConfig(**cfg))
    text = cfg["text_config"]
    experts, inter, hidden = text["n_routed_experts"], text["moe_intermediate_size"], text["hidden_size"]
    out: dict[str, tuple[tuple[int, ...], object]] = {}
    for name, t in model.state_dict().items():
        m = re.fullmatch(r"(.*\.mlp\.experts)\.(gate_up_proj|down_proj)", name)
        if m is None:
            out[name] = (tuple(t.shape), torch.float32 if "e_score_correction_bias" in name else torch.bfloat16)
            continue
        for e in range(experts):
            if m.group(2) == "gate_up_proj":
                out[f"{m.group(1)}.{e}.gate_proj.weight"] = ((inter, hidden), torch.bfloat16)
                out[f"{m.group(1)}.{e}.up_proj.weight"] = ((inter, hidden), torch.bfloat16)
            else:
                out[f"{m.group(1)}.{e}.down_proj.weight"] = ((hidden, inter), torch.bfloat16)
    return out


def write_checkpoint(hf: Path, cfg: dict) -> int:
    """Random values, one tensor at a time (the writer streams); returns the bytes written."""
    import torch

    from mm_core.checkpoint.hf import HFWriter

    hf.mkdir(parents=True, exist_ok=True)
    (hf / "config.json").write_text(json.dumps(cfg, indent=2))
    shapes = hf_shapes(cfg)
    writer = HFWriter(hf, shapes, max_shard_bytes=2 * 1024**3)
    g = torch.Generator().manual_seed(0)
    for key, (shape, dtype) in shapes.items():
        writer.write(key, (torch.randn(shape, generator=g) * 0.02).to(dtype))
    writer.close()
    return writer.total


def worker(hf: str, result_prefix: str) -> None:
    """One rank: build the engine's stage from ``hf`` under ep 4 = dp 4 and measure."""
    from mm_core.engine.config import (
        DataConfig,
        FinetuneConfig,
        ModelConfig,
        ParallelConfig,
        TrainingConfig,
        load_hf_config,
    )
    from mm_core.engine.mesh import init_distributed, shutdown
    from mm_core.engine.model_setup import resolve_spec, stages_for

    init_distributed("cpu")
    world = int(os.environ["WORLD_SIZE"])
    cfg = FinetuneConfig(model=ModelConfig(hf_dir=hf), data=DataConfig(source="synthetic"),
                         parallel=ParallelConfig(device="cpu", ep=world),
                         training=TrainingConfig(global_batch_size=world, train_iters=1))
    resolve_spec(cfg, load_hf_config(cfg))  # the family's modules imported before the baseline
    with sampled_rss() as rss:
        t0 = time.perf_counter()
        par, _, stages = stages_for(cfg)  # the mesh's process groups are made here too (small, in the growth)
        seconds = time.perf_counter() - t0
    before = rss.before
    held = sum((p.to_local() if hasattr(p, "to_local") else p).numel() * 4 for p in stages.modules[0].parameters())
    total = sum(p.numel() * 4 for p in stages.modules[0].parameters())  # DTensor numel: the whole
    out = {"rank": par.rank, "rss_before_gb": before, "load_peak_rss_gb": rss.peak,
           "load_growth_gb": rss.peak - before, "ru_maxrss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
           "held_param_gb": held / 2**30, "model_fp32_gb": total / 2**30, "load_seconds": seconds}
    Path(f"{result_prefix}{par.rank}.json").write_text(json.dumps(out))
    shutdown(True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--moe-layers", type=int, default=1)
    ap.add_argument("--workdir", default=None, help="where the checkpoint is written (default: a temporary dir)")
    ap.add_argument("--out", default=str(HERE / "results" / "load_memory.json"))
    ap.add_argument("--worker", nargs=2, metavar=("HF", "RESULT_PREFIX"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(*args.worker)
        return
    cfg = model_config(args.quick, args.moe_layers)
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp_dir:
        tmp = Path(tmp_dir)
        disk = write_checkpoint(tmp / "hf", cfg)
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(WORLD),
               str(Path(__file__).resolve()), "--worker", str(tmp / "hf"), str(tmp / "rank")]
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        if proc.returncode != 0:
            sys.exit(f"load_memory: the {WORLD}-process launch failed:\n{proc.stderr[-4000:]}")
        ranks = [json.loads((tmp / f"rank{r}.json").read_text()) for r in range(WORLD)]
    text = cfg["text_config"]
    model_gb = ranks[0]["model_fp32_gb"]
    result = {
        "quick": args.quick, "world": WORLD, "layout": f"ep {WORLD} = dp {WORLD} (FSDP2), gloo, CPU, fp32 parameters",
        "model": {"hidden_size": text["hidden_size"], "n_routed_experts": text["n_routed_experts"],
                  "moe_intermediate_size": text["moe_intermediate_size"], "num_hidden_layers": text["num_hidden_layers"],
                  "first_k_dense_replace": text["first_k_dense_replace"], "vocab_size": text["vocab_size"],
                  "heads": [text["num_attention_heads"], text["num_key_value_heads"]], "head_dim": text["head_dim"],
                  "vision_depth": cfg["vision_config"]["depth"]},
        "checkpoint_bf16_gb": disk / 2**30, "model_fp32_gb": model_gb, "model_fp32_gb_per_rank": model_gb / WORLD,
        "ranks": ranks,
        "max_load_peak_rss_gb": max(r["load_peak_rss_gb"] for r in ranks),
        "max_load_growth_gb": max(r["load_growth_gb"] for r in ranks),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"load_memory ({WORLD} ranks, ep {WORLD} = dp {WORLD}{', quick' if args.quick else ''}): model "
          f"{model_gb:.2f} GB fp32 ({model_gb / WORLD:.2f} GB per rank); per rank while loading: peak RSS "
          f"{result['max_load_peak_rss_gb']:.2f} GB, growth {result['max_load_growth_gb']:.2f} GB "
          f"(held {max(r['held_param_gb'] for r in ranks):.2f} GB)")


if __name__ == "__main__":
    main()

"""Forward+backward throughput and peak memory: mm's Qwen2.5-VL vs transformers', same weights.

    .venv/bin/python bench/qwen_step.py            # hidden 512, 4+4 layers, 2 images 448x448, seq 2048
    .venv/bin/python bench/qwen_step.py --quick    # a small run (seconds)

Both models load the same tiny random checkpoint (transformers saves it; ours reads it through the
converter), run the same batch in the same dtype and thread count, and compute the same shifted
cross-entropy (fp32 logits). On CPU, tokens/s are computed from the process's CPU time per step
divided by the thread count (wall time is also reported: on a shared machine other processes
inflate it). Each model is measured in its own child process so that peak memory
(CUDA: max allocated; CPU: peak RSS growth during the timed steps, sampled) is its own. Prints a one-line
summary and writes JSON (default bench/results/qwen_step.json), including where our time goes
(profiler top ops). The two models alternate (``--repeats``) and the best step counts, so a burst of
load from other processes does not decide the ratio.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch
import torch.nn.functional as F

VOCAB_IDS = {"image_token_id": 0, "video_token_id": 1, "vision_start_token_id": 2, "vision_end_token_id": 3}


def bench_config(quick: bool) -> tuple[dict, dict]:
    """(model config overrides, workload) for the full or the quick run."""
    if quick:
        model = dict(hidden=256, heads=4, kv_heads=2, vit_hidden=256, vit_heads=4, vision_depth=2, text_layers=2,
                     fullatt_block_indexes=(1,), window_size=112, vocab_size=8192)
        work = dict(image_px=224, images=2, seq=512)
    else:
        model = dict(hidden=512, heads=8, kv_heads=2, vit_hidden=512, vit_heads=8, vision_depth=4, text_layers=4,
                     fullatt_block_indexes=(3,), window_size=112, vocab_size=32768)
        work = dict(image_px=448, images=2, seq=2048)
    return model, work


def _config_dict(model: dict) -> dict:
    from mm_qwen.tiny import tiny_config_dict

    vocab_size = model["vocab_size"]
    vocab = {"vocab_size": vocab_size, **{k: vocab_size - 8 + v for k, v in VOCAB_IDS.items()}}
    kwargs = {k: v for k, v in model.items() if k != "vocab_size"}
    return tiny_config_dict(vocab=vocab, **kwargs)


def _batch(config: dict, work: dict) -> dict:
    from mm_qwen.tiny import make_inputs

    side = work["image_px"] // config["vision_config"]["patch_size"]
    per_image = side * side // 4 + 2
    text = work["seq"] - work["images"] * per_image
    parts: list[tuple] = []
    chunk = text // (work["images"] + 1)
    for _ in range(work["images"]):
        parts += [("text", chunk), ("image", (1, side, side))]
    parts.append(("text", text - chunk * work["images"]))
    return make_inputs(config, [parts], seed=0)


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class _RssSampler:
    """Peak resident memory while the timed steps run (sampled every 2 ms; ru_maxrss would include
    the checkpoint loading that happens before)."""

    def __init__(self) -> None:
        self.peak = _rss_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, _rss_mb())

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return max(self.peak, _rss_mb())


def _measure(which: str, hf_dir: str, config: dict, work: dict, args: argparse.Namespace, profile: bool,
             out: dict) -> None:
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    device = torch.device(args.device)
    batch = {k: v.to(device) for k, v in _batch(config, work).items()}
    batch = {k: (v.to(dtype) if v.is_floating_point() and k.startswith("pixel") else v) for k, v in batch.items()}
    labels = batch.pop("labels")
    if which == "ours":
        from mm_core.nn.pretrained import load_pretrained as load_model

        model = load_model(hf_dir, device=device, dtype=dtype).train()
        inputs = {k: v for k, v in batch.items() if k != "mm_token_type_ids"}

        shifted = F.pad(labels, (0, 1), value=-100)[:, 1:]  # shift the labels, not the logits (as HF does)

        def step() -> torch.Tensor:
            logits = model(**inputs)
            return F.cross_entropy(logits.flatten(0, 1).float(), shifted.flatten(), ignore_index=-100)
    else:
        from transformers import Qwen2_5_VLForConditionalGeneration

        model = Qwen2_5_VLForConditionalGeneration.from_pretrained(hf_dir, dtype=dtype).to(device).train()

        def step() -> torch.Tensor:
            return model(**batch, labels=labels).loss

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(args.warmup):
        step().backward()
        model.zero_grad(set_to_none=True)
    sync()
    base_rss = _rss_mb()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base_cuda = torch.cuda.memory_allocated() / 2**20
    times, cpu_times, losses = [], [], []
    sampler = _RssSampler() if device.type == "cpu" else None
    for _ in range(args.steps):
        t0, c0 = time.perf_counter(), time.process_time()
        loss = step()
        loss.backward()
        sync()
        times.append(time.perf_counter() - t0)
        cpu_times.append(time.process_time() - c0)
        losses.append(loss.item())
        model.zero_grad(set_to_none=True)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20 - base_cuda
    else:
        peak = sampler.stop() - base_rss
    top = []
    if profile:
        from torch.profiler import ProfilerActivity, profile

        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with profile(activities=acts) as prof:
            step().backward()
            sync()
        key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
        events = sorted(prof.key_averages(), key=lambda e: getattr(e, key, 0), reverse=True)
        total = sum(getattr(e, key, 0) for e in events) or 1
        top = [{"op": e.key, "share": round(getattr(e, key, 0) / total, 3), "calls": e.count} for e in events[:10]]
    breakdown = _breakdown(model, inputs, shifted, device) if profile else {}
    tokens = int(batch["input_ids"].numel())
    # the fastest step is the least disturbed one; on a shared CPU other processes inflate wall time,
    # while process CPU time counts our own work
    wall, cpu = min(times), min(cpu_times)
    per_s = cpu / args.threads if device.type == "cpu" else wall
    prev = out.get(which)
    result = {"step_wall_s": wall, "step_cpu_s": cpu, "step_wall_s_median": statistics.median(times),
              "tokens_per_s": tokens / per_s, "wall_tokens_per_s": tokens / wall, "peak_mem_mb": peak,
              "loss": losses[-1], "top_ops": top or (prev or {}).get("top_ops", []), "tokens": tokens,
              "breakdown_cpu_s": breakdown or (prev or {}).get("breakdown_cpu_s", {})}
    if prev is not None:  # a repeat: keep the best time, the largest memory
        result["tokens_per_s"] = max(result["tokens_per_s"], prev["tokens_per_s"])
        result["wall_tokens_per_s"] = max(result["wall_tokens_per_s"], prev["wall_tokens_per_s"])
        result["peak_mem_mb"] = max(result["peak_mem_mb"], prev["peak_mem_mb"])
    out[which] = result


def _breakdown(model, inputs: dict, shifted: torch.Tensor, device: torch.device) -> dict[str, float]:
    """CPU seconds of fwd+bwd for the vision encoder, the decoder layers and the LM head + loss."""
    def timed(fn) -> float:
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        c0 = time.process_time()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.process_time() - c0

    grids = inputs["image_grid_thw"]
    vision = timed(lambda: model.image_encoder(None, inputs["pixel_values"], grids).sum().backward())
    with torch.no_grad():
        hidden = model(**inputs, return_hidden=True)
    hidden.requires_grad_(True)

    def head() -> None:
        logits = hidden @ model.output_weight().t()
        F.cross_entropy(logits.flatten(0, 1).float(), shifted.flatten(), ignore_index=-100).backward()

    lm_head = timed(head)
    whole = timed(lambda: F.cross_entropy(model(**inputs).flatten(0, 1).float(), shifted.flatten(),
                                          ignore_index=-100).backward())
    model.zero_grad(set_to_none=True)
    return {"vision_encoder": vision, "decoder_layers": max(whole - vision - lm_head, 0.0),
            "lm_head_and_loss": lm_head, "whole_step": whole}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="small config and workload")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--threads", type=int, default=1, help="intra-op threads for both models")
    p.add_argument("--repeats", type=int, default=2, help="alternate the two models this many times")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--no-profile", dest="profile", action="store_false")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "qwen_step.json"))
    args = p.parse_args(argv)
    from mm_qwen.tiny import build_hf_model

    model_cfg, work = bench_config(args.quick)
    config = _config_dict(model_cfg)
    ctx = mp.get_context("spawn")
    results = ctx.Manager().dict()
    with tempfile.TemporaryDirectory() as tmp:
        build_hf_model(config, seed=0, std=0.02).save_pretrained(tmp)
        order = [w for r in range(args.repeats) for w in (("transformers", "ours") if r % 2 == 0
                                                           else ("ours", "transformers"))]
        for which in order:
            profile = args.profile and which == "ours" and "ours" not in results  # once is enough
            proc = ctx.Process(target=_measure, args=(which, tmp, config, work, args, profile, results))
            proc.start()
            proc.join()
            if proc.exitcode:
                print(f"{which} run failed (exit {proc.exitcode})", file=sys.stderr)
                return 1
    ours, ref = results["ours"], results["transformers"]
    summary = {
        "device": args.device, "dtype": args.dtype, "threads": args.threads, "quick": args.quick,
        "model": model_cfg, "workload": work, "ours": ours, "transformers": ref,
        "speedup": ours["tokens_per_s"] / ref["tokens_per_s"],
        "wall_speedup": ours["wall_tokens_per_s"] / ref["wall_tokens_per_s"],
        "tokens_per_s_basis": "process CPU time / threads" if args.device == "cpu" else "wall time",
        "memory_ratio": ours["peak_mem_mb"] / ref["peak_mem_mb"] if ref["peak_mem_mb"] > 0 else None,
        "loss_abs_diff": abs(ours["loss"] - ref["loss"]),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(summary, indent=1))
    mem = f"{summary['memory_ratio']:.2f}x" if summary["memory_ratio"] is not None else "n/a"
    print(f"qwen_step [{args.device} {args.dtype} {args.threads}thr {work['seq']}tok]: ours "
          f"{ours['tokens_per_s']:.0f} tok/s vs transformers {ref['tokens_per_s']:.0f} tok/s "
          f"(x{summary['speedup']:.2f}, wall x{summary['wall_speedup']:.2f}); peak mem ours {ours['peak_mem_mb']:.0f} MB vs "
          f"{ref['peak_mem_mb']:.0f} MB ({mem}); |loss diff| {summary['loss_abs_diff']:.1e} -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

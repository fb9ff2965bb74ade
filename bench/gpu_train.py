"""One-GPU training step: the mm engine vs transformers, plain and with Liger kernels (issue 16).

    python bench/gpu_train.py                          # Qwen2.5-VL-3B widths, 8+8 layers, bf16, seq 4096
    python bench/gpu_train.py --profile                # + where the engine's step time goes (profile_summary.py)
    python bench/gpu_train.py --full-depth             # Qwen2.5-VL-3B depth: 32 ViT + 36 LLM layers, tied
    python bench/gpu_train.py --shape qwen2_5_vl_7b    # Qwen2.5-VL-7B shapes, frozen ViT, full recompute
    python bench/gpu_train.py --quick                  # small model, a few seconds
    python bench/gpu_train.py --quick --device cpu --steps 1 --warmup 0   # the CPU test's run

The models have Qwen2.5-VL's real widths and vocabulary, random init. Every side trains the same
synthetic batches (2 images of 448x448, one sample per micro-batch, 2 per step) with fp32 master
weights, bf16 compute (autocast) and AdamW. Sides (``--sides``), run interleaved ``--repeats``
times (a slow spell of the host hits every side; the fastest run of each counts):

- ``engine``: ``parallel.fsdp auto`` (one rank trains the plain module under autocast), with the
  kernel registry's best kernels (Liger's on CUDA when liger-kernel imports, mm_core/kernels/cuda_liger.py);
- ``engine_ref``: the same with ``MM_LIGER_KERNELS=0`` (the reference kernels): what the fused ones gain;
- ``fsdp``: ``parallel.fsdp always``: FSDP2 on the single rank with its bf16 parameter cast;
- ``transformers``: ``Qwen2_5_VLForConditionalGeneration`` (sdpa) under autocast, fused AdamW, a plain loop;
- ``liger``: the same loop with Liger kernels, as LLaMA-Factory's ``enable_liger_kernel`` applies them
  (``apply_liger_kernel_to_qwen2_5_vl``, or op by op where that patch fails to import).

Tokens/s count every position of the batch (median step). MFU is reported two ways: 6 x parameters
x tokens (``mfu``), and that plus the attention score/value products (``mfu_attn``: causal in the
LLM, per window or image in the ViT). ``--profile`` traces ``--profile-steps`` more engine steps
and stores the time split (GEMMs, attention, elementwise, optimizer, idle GPU; vision tower,
decoder, loss). Prints one line and writes JSON (default bench/results/gpu_train.json).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import statistics
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from liger_baseline import apply_liger, liger_importable, liger_modules, restored

HERE = Path(__file__).resolve().parent
SHAPES = ("qwen2_5_vl_3b", "qwen2_5_vl_7b")
SIDES = ("engine", "engine_ref", "fsdp", "transformers", "liger")
JSON_KEYS = {"engine": "engine_auto", "engine_ref": "engine_reference_kernels", "fsdp": "engine_fsdp",
             "transformers": "transformers", "liger": "transformers_liger"}  # engine_*: the names table.py reads
LIGER_ENV = "MM_LIGER_KERNELS"  # read by mm_core.kernels.cuda_liger


def model_config(shape: str, quick: bool, full_depth: bool, device: str) -> tuple[dict, dict]:
    """(HF config dict, workload) of the benchmark model."""
    from mm_qwen.tiny import tiny_config_dict

    if quick and device == "cpu":  # seconds on two cores: the CPU test's run
        m: dict[str, Any] = dict(hidden=64, heads=4, kv_heads=2, vit_hidden=32, vit_heads=2, vision_depth=2,
                                 text_layers=2, fullatt_block_indexes=(1,), window_size=56)
        work, vocab = dict(image_px=112, images=1, seq=128, steps=4), 1024
    elif quick:
        m = dict(hidden=512, heads=8, kv_heads=2, vit_hidden=512, vit_heads=8, vision_depth=2, text_layers=2,
                 fullatt_block_indexes=(1,), window_size=112)
        work, vocab = dict(image_px=224, images=1, seq=1024, steps=4), 32768
    elif shape == "qwen2_5_vl_7b":  # Qwen2.5-VL-7B-Instruct's config
        m = dict(hidden=3584, heads=28, kv_heads=4, vit_hidden=1280, vit_heads=16, vision_depth=32, text_layers=28,
                 fullatt_block_indexes=(7, 15, 23, 31), window_size=112, intermediate_size=18944)
        work, vocab = dict(image_px=448, images=2, seq=4096, steps=8, chunk=1024), 152064  # ~125 GB of state
    else:  # Qwen2.5-VL-3B's widths; 8+8 layers unless full depth (32 + 36, tied head)
        deep = full_depth
        m = dict(hidden=2048, heads=16, kv_heads=2, vit_hidden=1280, vit_heads=16, vision_depth=32 if deep else 8,
                 text_layers=36 if deep else 8, fullatt_block_indexes=(7, 15, 23, 31) if deep else (3, 7),
                 window_size=112, intermediate_size=11008, tied=deep)
        work, vocab = dict(image_px=448, images=2, seq=4096, steps=8 if deep else 16), 151936
    ids = {"vocab_size": vocab, "image_token_id": vocab - 8, "video_token_id": vocab - 7,
           "vision_start_token_id": vocab - 6, "vision_end_token_id": vocab - 5}
    cfg = tiny_config_dict(vocab=ids, **m)
    if not quick:  # the real models' ViT MLP width and multimodal rotary split
        cfg["vision_config"]["intermediate_size"] = 3420
        cfg["text_config"]["rope_parameters"]["mrope_section"] = [16, 24, 24]
    return cfg, work


def attention_flops(hf: dict, work: dict) -> float:
    """Training FLOPs (forward + backward = 3 x forward) of one sample's attention products
    (QK^T and PV, 2 FLOPs a multiply-add each): causal over the LLM sequence; in the ViT per
    window (``window_size`` px windows on the merged grid) or per image in full-attention blocks."""
    t, v = hf["text_config"], hf["vision_config"]
    seq = work["seq"]
    head_dim = t["hidden_size"] // t["num_attention_heads"]
    llm = 3 * 2 * 2 * (seq * seq / 2) * t["num_attention_heads"] * head_dim * t["num_hidden_layers"]
    merge, patch = v["spatial_merge_size"], v["patch_size"]
    grid = work["image_px"] // patch // merge  # merged units per side
    w = max(1, v["window_size"] // patch // merge)
    sides = [min(w, grid - i) for i in range(0, grid, w)]
    window_sq = sum((a * b * merge * merge) ** 2 for a in sides for b in sides)  # sum of window lengths^2
    full_sq = (grid * grid * merge * merge) ** 2
    n_full = len(v["fullatt_block_indexes"])
    per_image = 3 * 2 * 2 * v["hidden_size"] * (n_full * full_sq + (v["depth"] - n_full) * window_sq)
    return llm + work["images"] * per_image


def step_flops(hf: dict, work: dict, params: int) -> tuple[float, float]:
    """(6 x params x tokens, the same plus attention) for one step of 2 samples."""
    tokens = 2 * work["seq"]
    dense = 6.0 * params * tokens
    return dense, dense + 2 * attention_flops(hf, work)


def _mfu(flops: float, step_s: float, device: str) -> float | None:
    from mm_core.engine.metrics import peak_flops

    peak = peak_flops(torch.device(device)) if device != "cpu" else None
    return flops / step_s / peak if peak else None


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _reset_memory(device: str) -> None:
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _peak_gb(device: str) -> float:
    from mm_core.engine.metrics import peak_memory_gb

    return peak_memory_gb(torch.device(device))


def engine_config(hf: dict, work: dict, out: Path, fsdp: str, opts: argparse.Namespace) -> dict:
    image_tokens = work["images"] * (work["image_px"] // 14) ** 2 // 4
    text = work["seq"] - image_tokens - 2 * work["images"]
    return {
        "model": {"hf_config": hf, "random_init": True, "freeze": list(opts.freeze)},
        "data": {"source": "synthetic", "synthetic_samples": 64, "synthetic_min_len": text, "synthetic_max_len": text,
                 "synthetic_image_size": work["image_px"], "synthetic_images": work["images"],
                 "synthetic_text_only_every": 0},
        "parallel": {"device": opts.device, "fsdp": fsdp},
        "training": {"micro_batch_size": 1, "global_batch_size": 2, "seq_length": work["seq"],
                     "train_iters": work["steps"] + opts.warmup + opts.profile_steps, "lr": 1e-4,
                     "dtype": opts.dtype, "loss_type": "per_token_loss", "compute_mode": "chunk",
                     "chunk_size": work.get("chunk", 4096), "compile": opts.compile,
                     "recompute": "full" if opts.recompute else "none"},
        "output": {"progress_bar": False, "log_interval": 1000, "metrics_file": str(out / f"metrics_{fsdp}.jsonl")},
    }


@contextlib.contextmanager
def kernels_env(use_liger: bool) -> Iterator[None]:
    """The kernel registry with or without the Liger kernels (looked up afresh either way)."""
    from mm_core.kernels.registry import clear_kernel_cache

    old = os.environ.get(LIGER_ENV)
    os.environ[LIGER_ENV] = "1" if use_liger else "0"
    clear_kernel_cache()
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(LIGER_ENV, None)
        else:
            os.environ[LIGER_ENV] = old
        clear_kernel_cache()


class _Range:
    """A ``record_function`` range opened and closed by module hooks (forward, and its recompute)."""

    def __init__(self, name: str):
        self.name, self.open = name, []

    def enter(self, *_: Any) -> None:
        rf = torch.profiler.record_function(self.name)
        rf.__enter__()
        self.open.append(rf)

    def exit(self, *_: Any) -> None:
        if self.open:
            self.open.pop().__exit__(None, None, None)


@contextlib.contextmanager
def engine_ranges(trainer: Any) -> Iterator[None]:
    """Profiler ranges around the engine's vision tower, decoder, loss and optimizer steps."""
    handles: list[Any] = []
    restore: list[Callable[[], None]] = []
    for stage in trainer.stages.modules:
        model = getattr(stage, "model", stage)
        for attr, name in (("image_encoder", "vision"), ("text_decoder", "decoder")):
            mod = getattr(model, attr, None)
            if mod is not None:
                r = _Range(name)
                handles += [mod.register_forward_pre_hook(r.enter), mod.register_forward_hook(r.exit)]
        if getattr(stage, "loss_fn", None) is not None:
            inner = stage.loss_fn

            def loss_fn(*a: Any, _inner: Callable = inner) -> torch.Tensor:
                with torch.profiler.record_function("loss"):
                    return _inner(*a)

            stage.loss_fn = loss_fn
            restore.append(lambda s=stage, f=inner: setattr(s, "loss_fn", f))
    for opt in trainer.optimizers:
        if opt is not None:
            r = _Range("optimizer")
            handles += [opt.register_step_pre_hook(r.enter), opt.register_step_post_hook(r.exit)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()
        for undo in restore:
            undo()


def profile_engine(trainer: Any, steps: int, device: str, trace: Path) -> dict:
    """``steps`` more engine steps under torch.profiler, summarised (profile_summary.py)."""
    from profile_summary import one_line, summarize_profiler
    from torch.profiler import ProfilerActivity, profile, record_function

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    with engine_ranges(trainer), profile(activities=acts) as prof:
        for _ in range(steps):
            with record_function("step"):
                trainer.train_step()
                _sync(device)
    summary = summarize_profiler(prof, trace)
    print(f"  profile: {one_line(summary)}", flush=True)
    return summary


def run_engine(hf: dict, work: dict, tmp: Path, fsdp: str, opts: argparse.Namespace, liger: bool = True,
               profile: bool = False) -> dict:
    import yaml

    from mm_core.engine.config import parse_finetune_config
    from mm_core.engine.trainer import Trainer, shutdown

    cfg_file = tmp / f"engine_{fsdp}.yaml"
    cfg_file.write_text(yaml.safe_dump(engine_config(hf, work, tmp, fsdp, opts)))
    _reset_memory(opts.device)
    with kernels_env(liger):
        trainer = Trainer(parse_finetune_config(["--config", str(cfg_file)]))
        try:
            from mm_core.kernels import kernel_candidates

            kernels = {op: kernel_candidates(op, opts.device)[0].name for op in ("rms_norm", "rotary", "swiglu")}
            records = [trainer.train_step() for _ in range(work["steps"] + opts.warmup)][opts.warmup:]
            n_params = trainer.n_params
            summary = profile_engine(trainer, opts.profile_steps, opts.device, tmp / "trace.json") if profile else None
        finally:
            shutdown()
            del trainer
            _reset_memory(opts.device)
    step = statistics.median(r["step_time_s"] for r in records)
    dense, with_attn = step_flops(hf, work, n_params)
    res = {"step_s": step, "tokens_per_s": 2 * work["seq"] / step, "mfu": _mfu(dense, step, opts.device),
           "mfu_attn": _mfu(with_attn, step, opts.device), "peak_memory_gb": max(r["peak_memory_gb"] for r in records),
           "loss": records[-1]["loss"], "params": n_params, "kernels": kernels}
    if summary is not None:
        res["profile"] = summary
    return res


def run_transformers(hf: dict, work: dict, tmp: Path, opts: argparse.Namespace, liger: bool = False,
                     model_patch: bool = True) -> dict:
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from mm_core.engine.config import parse_finetune_config, validate
    from mm_core.engine.data import SyntheticData

    dev = opts.device
    torch.manual_seed(0)
    with torch.device(dev):  # initialised where it trains (a 3B model's random init on the host takes long)
        model = Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig.from_dict(hf)).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    cfg = parse_finetune_config(["--config", str(tmp / "engine_auto.yaml")])
    data = SyntheticData(cfg, validate(cfg, 1, hf), 0, hf)  # one process: all micro-batches of a step
    n_params = sum(p.numel() for p in model.parameters())
    how, loss_fn = "none", None
    with restored(*(liger_modules() if liger else [])):
        if liger:
            how, loss_fn = apply_liger(model, model_patch)
        _reset_memory(dev)
        times, losses = [], []
        for _ in range(work["steps"] + opts.warmup):
            window = [{k: v.to(dev) if isinstance(v, torch.Tensor) else v for k, v in mb.items()}
                      for mb in data.next_window()]
            _sync(dev)
            t0 = time.perf_counter()
            total = 0.0
            for mb in window:
                ids = mb["input_ids"]
                batch = dict(input_ids=ids, attention_mask=mb["attention_mask"], pixel_values=mb["pixel_values"],
                             image_grid_thw=mb["image_grid_thw"], mm_token_type_ids=(ids == hf["image_token_id"]).int(),
                             labels=mb["labels"])
                with torch.autocast(dev, dtype=torch.bfloat16, enabled=opts.dtype == "bf16"):
                    loss = loss_fn(model, batch) if loss_fn else model(**batch).loss
                (loss / len(window)).backward()
                total += loss.detach() / len(window)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            _sync(dev)
            times.append(time.perf_counter() - t0)
            losses.append(float(total))
    step = statistics.median(times[opts.warmup:])
    peak = _peak_gb(dev)
    del model, opt
    _reset_memory(dev)
    dense, with_attn = step_flops(hf, work, n_params)
    return {"step_s": step, "tokens_per_s": 2 * work["seq"] / step, "mfu": _mfu(dense, step, dev),
            "mfu_attn": _mfu(with_attn, step, dev), "peak_memory_gb": peak, "loss": losses[-1], "params": n_params,
            "liger": how if liger else None}


def run_side(side: str, hf: dict, work: dict, tmp: Path, opts: argparse.Namespace, first: bool) -> dict:
    """One run of one side; a failure (out of memory, a kernel that does not build) is recorded, not fatal."""
    try:
        if side in ("engine", "engine_ref", "fsdp"):
            return run_engine(hf, work, tmp, "always" if side == "fsdp" else "auto", opts, liger=side != "engine_ref",
                              profile=opts.profile and first and side == "engine")
        if side == "liger":
            try:
                return run_transformers(hf, work, tmp, opts, liger=True)
            except Exception as e:  # noqa: BLE001 - the model patch imported but does not run: op by op
                print(f"  liger: the model patch failed ({type(e).__name__}: {str(e)[:200]}); op by op", flush=True)
                _reset_memory(opts.device)
                return run_transformers(hf, work, tmp, opts, liger=True, model_patch=False)
        return run_transformers(hf, work, tmp, opts)
    except Exception as e:  # noqa: BLE001
        traceback.print_exc()
        _reset_memory(opts.device)
        return {"error": f"{type(e).__name__}: {str(e)[:500]}", "tokens_per_s": 0.0}


def ratios(best: dict[str, dict]) -> dict[str, float | None]:
    """Engine over each baseline: speed (tokens/s) and memory."""
    eng = best.get("engine", {})

    def r(a: dict, b: dict, key: str) -> float | None:
        return a[key] / b[key] if a.get(key) and b.get(key) else None

    out = {}
    for name, key in (("transformers", "transformers"), ("liger", "liger"), ("fsdp_at_dp1", "fsdp"),
                      ("reference_kernels", "engine_ref")):
        out[f"speedup_vs_{name}"] = r(eng, best.get(key, {}), "tokens_per_s")
    out["memory_ratio_vs_transformers"] = r(eng, best.get("transformers", {}), "peak_memory_gb")
    out["memory_ratio_vs_liger"] = r(eng, best.get("liger", {}), "peak_memory_gb")
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--shape", choices=SHAPES, default="qwen2_5_vl_3b")
    p.add_argument("--full-depth", action="store_true", help="qwen2_5_vl_3b at full depth (32 + 36 layers, tied)")
    p.add_argument("--quick", action="store_true", help="a small model (tiny on --device cpu)")
    p.add_argument("--sides", default=None, help=f"comma-separated, of {','.join(SIDES)} (default: all but "
                   "engine_ref; the 7B shape: engine only)")
    p.add_argument("--repeats", type=int, default=2, help="interleaved runs of each side; the fastest counts")
    p.add_argument("--steps", type=int, default=None, help="timed steps (default: the shape's)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--profile", action="store_true", help="profile the first engine run's extra steps")
    p.add_argument("--profile-steps", type=int, default=3)
    p.add_argument("--dtype", choices=("bf16", "fp32"), default=None, help="default: bf16 on cuda, fp32 on cpu")
    p.add_argument("--freeze", default=None, help="module groups to freeze (7B default: vision_encoder)")
    p.add_argument("--engine-only", action="store_true", help="same as --sides engine")
    p.add_argument("--compile", action="store_true", help="engine: training.compile true")
    p.add_argument("--recompute", action="store_true", help="engine: training.recompute full (7B: always)")
    p.add_argument("--out", default=str(HERE / "results" / "gpu_train.json"))
    a = p.parse_args(argv)
    seven = a.shape == "qwen2_5_vl_7b"
    if a.full_depth and seven:
        p.error("--full-depth is for qwen2_5_vl_3b (the 7B shape is always full depth)")
    a.dtype = a.dtype or ("bf16" if a.device == "cuda" else "fp32")
    a.sides = [s.strip() for s in (a.sides or ("engine" if seven or a.engine_only
                                               else "engine,fsdp,transformers,liger")).split(",") if s.strip()]
    unknown = [s for s in a.sides if s not in SIDES]
    if unknown:
        p.error(f"--sides: unknown {unknown}; valid: {', '.join(SIDES)}")
    a.freeze = [f for f in (a.freeze if a.freeze is not None else ("vision_encoder" if seven else "")).split(",") if f]
    a.recompute = a.recompute or seven
    if not a.profile:
        a.profile_steps = 0
    return a


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    if opts.device == "cuda" and not torch.cuda.is_available():
        print("gpu_train: no CUDA device visible (--device cpu runs the small CPU check)")
        return 1
    hf, work = model_config(opts.shape, opts.quick, opts.full_depth, opts.device)
    if opts.steps is not None:
        work["steps"] = opts.steps
    skipped = {}
    if "liger" in opts.sides and (opts.device != "cuda" or liger_importable()):
        skipped["liger"] = "needs CUDA" if opts.device != "cuda" else liger_importable()
        opts.sides = [s for s in opts.sides if s != "liger"]
    runs: dict[str, list[dict]] = {s: [] for s in opts.sides}
    device_name = torch.cuda.get_device_name() if opts.device == "cuda" else "cpu"
    shape = f"{opts.shape}{' full depth' if opts.full_depth else ''}{' quick' if opts.quick else ''}"

    def write() -> dict[str, dict]:  # after every run: a part stopped at its time limit keeps what it has
        best = {s: max(v, key=lambda r: r.get("tokens_per_s", 0)) for s, v in runs.items() if v}
        summary = {"device": device_name, "shape": shape, "dtype": opts.dtype, "model": hf, "workload": work,
                   "freeze": opts.freeze, "recompute": opts.recompute, "compile": opts.compile,
                   "attention_flops_per_sample": attention_flops(hf, work), "skipped": skipped,
                   "all_runs_tokens_per_s": {k: [r.get("tokens_per_s") for r in v] for k, v in runs.items()},
                   **{JSON_KEYS[k]: v for k, v in best.items()}, **ratios(best)}
        Path(opts.out).parent.mkdir(parents=True, exist_ok=True)
        Path(opts.out).write_text(json.dumps(summary, indent=1))
        return best

    best: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:  # the transformers loops read their batches from the engine's config
        Path(tmp, "engine_auto.yaml").write_text(json.dumps(engine_config(hf, work, Path(tmp), "auto", opts)))
        for i in range(opts.repeats):  # interleaved: a slow spell of the host hits every side
            for side in opts.sides:
                res = run_side(side, hf, work, Path(tmp), opts, first=i == 0)
                runs[side].append(res)
                print(f"  {side} run {i + 1}: {res.get('tokens_per_s', 0):.0f} tok/s"
                      f"{' ' + res['error'] if 'error' in res else ''}", flush=True)
                best = write()
    eng = best.get("engine", {})

    def pct(x: float | None) -> str:
        return f"{100 * x:.1f}%" if x is not None and not math.isnan(x) else "-"

    base = "; ".join(f"{s} {r.get('tokens_per_s', 0):.0f} tok/s ({r.get('peak_memory_gb', 0):.1f} GB)"
                     for s, r in best.items() if s != "engine")
    print(f"gpu_train [{device_name} {opts.dtype} {shape}, {eng.get('params', 0) / 1e9:.2f}B params, seq "
          f"{work['seq']}]: engine {eng.get('tokens_per_s', 0):.0f} tok/s (MFU {pct(eng.get('mfu'))}, with attention "
          f"{pct(eng.get('mfu_attn'))}, {eng.get('peak_memory_gb', 0):.1f} GB){'; ' + base if base else ''} "
          f"-> {opts.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

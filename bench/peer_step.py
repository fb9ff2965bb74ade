"""The peer workload of issue 18: the mm engine vs a plain transformers loop standing in for LLaMA-Factory.

    .venv/bin/python bench/peer_step.py            # 17.3M-param Qwen2.5-VL, 448 px, 5 rounds and a FLOP count (~18 min on a quiet 2-core machine)
    .venv/bin/python bench/peer_step.py --quick    # smaller images and vocabulary, 1 round (about a minute)

The model is a small Qwen2.5-VL of ~17.2M parameters (the count is printed; tied embeddings at Qwen's
vocabulary of 151,936), trained in fp32 with 2 threads on each side. The baseline is
``transformers.Qwen2_5_VLForConditionalGeneration`` in a plain loop with fused AdamW
(``torch.optim.AdamW(fused=True)``, weight decay 0, gradient clipping at 1.0: what the HF Trainer
under LLaMA-Factory runs; measured equal to LLaMA-Factory 0.9.5 within 3%). Both sides read the same
samples in the same order (the engine's synthetic source, ``data.source synthetic``), and the clock
covers the whole step on both sides (the data, forward, backward and optimizer). Settings:

(a) ``full``: everything trainable, one 448-px image (256 image tokens) and ~350 real tokens a sample,
    2 samples a step in one micro-batch; engine vs transformers, goal >= 1.05x.
(b) ``lf_defaults``: LLaMA-Factory's defaults, the ViT and merger frozen and activation recompute
    (engine ``training.recompute full``; transformers ``gradient_checkpointing_enable()``); goal >= 1.05x.
(c) ``packing``: (a)'s samples packed 2 to a 768-token row (``data.synthetic_packing``) vs the engine
    padded as in (a), the same samples per step; goal >= 1.0x (packing never slows a step).
(d) ``length_mix``: samples of 64-2048 tokens (log-normal text lengths, every second sample with an
    image), 4 a step, packed into rows of 8192 vs padded to the longest; goal >= 1.3x. This model's
    step is mostly the LM head on the loss tokens, which the engine never runs on padding: its ceiling
    (below) is 1.02x, so packing has little to win on it; hence
(e) ``length_mix_wide``: (d) on a model whose LLM layers dominate (hidden 512, 8 layers, vocab 32,768,
    the same ViT); goal >= 1.3x. Its ceiling is 1.34x: padding costs its 4 timed steps 1.39x the
    matmul FLOPs but no more attention (each sample attends to itself either way: 13% of the packed
    run's FLOPs), so the goal leaves ~3% for what does not scale with FLOPs.

Runs are interleaved: each round runs every arm once, in alternating order (ABBA), each in its own
process. A run's figure is its real (non-padding) input tokens over the wall clock of its timed
steps (after one warm-up step); a setting's ratio is the mean of the rounds' ratios, ± their
standard deviation. Where both arms are the engine ((c)-(e)), one more untimed run of each counts
the FLOPs of the same timed steps (``FlopCounterMode``: matmuls, plus attention through
``mm_core.kernels.attention_flops``, which torch does not count on CPU): the baseline's FLOPs over
ours is the setting's ceiling, what the ratio would be if a step's time followed its FLOPs. Prints
a one-line summary and writes JSON (default bench/results/peer_step.json). ``--settings`` runs some
settings only (``--settings length_mix_wide --rounds 3``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
THREADS = 2
QWEN_VOCAB = 151936
# (setting, ours arm, baseline arm, goal): each ratio is ours / baseline in real tokens per second
SETTINGS = (("full", "engine_full", "transformers_full", 1.05),
            ("lf_defaults", "engine_lf_defaults", "transformers_lf_defaults", 1.05),
            ("packing", "engine_packed", "engine_full", 1.0),
            ("length_mix", "engine_mix_packed", "engine_mix_padded", 1.3),
            ("length_mix_wide", "engine_mixwide_packed", "engine_mixwide_padded", 1.3))


def workload(quick: bool) -> dict[str, Any]:
    """Sizes of every setting (``--quick``: 224-px images, a 32k vocabulary, 1 round of 2 timed steps)."""
    if quick:
        return {"vocab": 32768, "image_px": 224, "text": (80, 104), "row": 384, "steps": 2, "mix_steps": 2, "rounds": 1,
                "mix_text": (32, 446), "mix_batch": 4, "mix_row": 2048,
                "wide": {"hidden": 256, "heads": 4, "layers": 4, "vocab": 8192}}
    return {"vocab": QWEN_VOCAB, "image_px": 448, "text": (80, 104), "row": 768, "steps": 6, "mix_steps": 4, "rounds": 5,
            "mix_text": (64, 1790), "mix_batch": 4, "mix_row": 8192,
            "wide": {"hidden": 512, "heads": 8, "layers": 8, "vocab": 32768}}


def model_config(vocab: int, hidden: int = 96, heads: int = 4, layers: int = 4) -> dict[str, Any]:
    """By default hidden 96, ViT 192 wide, 4+4 layers, tied: 17.3M parameters at Qwen's vocabulary."""
    from mm_qwen.tiny import tiny_config_dict

    ids = {"vocab_size": vocab, "image_token_id": vocab - 8, "video_token_id": vocab - 7,
           "vision_start_token_id": vocab - 6, "vision_end_token_id": vocab - 5}
    return tiny_config_dict(vocab=ids, tied=True, hidden=hidden, heads=heads, kv_heads=2, vit_hidden=192,
                            vit_heads=4, vision_depth=4, text_layers=layers, fullatt_block_indexes=(3,),
                            window_size=112)


def wide_config(work: dict[str, Any]) -> dict[str, Any]:
    """(e)'s model: the LLM wider and deeper, so its layers (which padding feeds) outweigh the LM head
    (which the engine runs on loss tokens only, padded or not)."""
    w = work["wide"]
    return model_config(w["vocab"], w["hidden"], w["heads"], w["layers"])


def parameter_count(hf: dict[str, Any]) -> int:
    """Parameters of transformers' model (tied weights once), built on the meta device."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    with torch.device("meta"):
        model = Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig.from_dict(hf))
    return sum(p.numel() for p in model.parameters())


def arm_config(arm: str, hf: dict[str, Any], work: dict[str, Any], out: Path) -> dict[str, Any]:
    """The engine config of an arm; the transformers arms read their samples through the same config."""
    mix = "mix" in arm
    if "mixwide" in arm:
        hf = wide_config(work)
    text = work["mix_text"] if mix else work["text"]
    batch = work["mix_batch"] if mix else 2
    steps = work["mix_steps"] if mix else work["steps"]
    data = {"source": "synthetic", "synthetic_samples": batch * (steps + 1),
            "synthetic_min_len": text[0], "synthetic_max_len": text[1],
            "synthetic_image_size": work["image_px"], "synthetic_images": 1,
            "synthetic_text_only_every": 2 if mix else 0, "synthetic_lengths": "lognormal" if mix else "uniform",
            "synthetic_packing": arm.endswith("_packed")}
    training = {"micro_batch_size": batch, "global_batch_size": batch, "train_iters": steps + 1,
                "seq_length": work["mix_row"] if mix else work["row"], "lr": 1e-4, "dtype": "fp32"}
    model: dict[str, Any] = {"hf_config": hf, "random_init": True}
    if arm.endswith("lf_defaults"):
        model["freeze"] = ["vision_encoder", "vision_projector"]
        training["recompute"] = "full"
    return {"model": model, "data": data, "parallel": {"device": "cpu"}, "training": training,
            "output": {"progress_bar": False, "log_interval": 1000, "metrics_file": str(out / f"{arm}.jsonl")}}


# -- the transformers loop (child process) --------------------------------------------------------

def hf_worker(cfg_file: str, result: str, lf_defaults: bool) -> None:
    """transformers' model in a plain loop over the engine config's samples, fused AdamW, 2 threads."""
    torch.set_num_threads(THREADS)
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from mm_core.engine.config import load_hf_config, parse_finetune_config, validate
    from mm_core.engine.data import SyntheticData

    cfg = parse_finetune_config(["--config", cfg_file])
    hf = load_hf_config(cfg)
    torch.manual_seed(cfg.training.seed)
    model = Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig.from_dict(hf)).train()
    if lf_defaults:  # LLaMA-Factory: freeze_vision_tower and freeze_multi_modal_projector, gradient checkpointing
        for name, p in model.named_parameters():
            if ".visual." in f".{name}":
                p.requires_grad_(False)
        model.gradient_checkpointing_enable()
    params = [p for p in model.parameters() if p.requires_grad]
    t = cfg.training
    opt = torch.optim.AdamW(params, lr=t.lr, betas=(t.adam_beta1, t.adam_beta2), eps=t.adam_eps,
                            weight_decay=t.weight_decay, fused=True)
    data = SyntheticData(cfg, validate(cfg, 1, hf), 0, hf)  # one process: every micro-batch of a step
    rows = []
    for _ in range(t.train_iters):
        c0, w0 = time.process_time(), time.perf_counter()
        window = data.next_window()
        for mb in window:
            ids = mb["input_ids"]
            out = model(input_ids=ids, attention_mask=mb["attention_mask"], pixel_values=mb["pixel_values"],
                        image_grid_thw=mb["image_grid_thw"], mm_token_type_ids=(ids == hf["image_token_id"]).int(),
                        labels=mb["labels"])
            (out.loss / len(window)).backward()
        torch.nn.utils.clip_grad_norm_(params, t.clip_grad)
        opt.step()
        opt.zero_grad(set_to_none=True)
        rows.append({"cpu_s": (time.process_time() - c0) / THREADS, "wall_s": time.perf_counter() - w0,
                     "real_tokens": int(sum(mb["attention_mask"].sum() for mb in window)),
                     "loss": float(out.loss)})
    Path(result).write_text(json.dumps({"steps": rows}))


def flops_worker(cfg_file: str, result: str) -> None:
    """FLOPs of an engine arm's timed steps (the warm-up step uncounted): all, and attention's share."""
    torch.set_num_threads(THREADS)
    from torch.utils.flop_counter import FlopCounterMode

    from mm_core.engine.config import parse_finetune_config
    from mm_core.engine.trainer import Trainer, shutdown
    from mm_core.kernels.attention_flops import flop_formulas

    formulas = flop_formulas()
    trainer = Trainer(parse_finetune_config(["--config", cfg_file]))
    try:
        trainer.train_step()
        counter = FlopCounterMode(display=False, custom_mapping=formulas)
        with counter:
            while trainer.step < trainer.total_steps:
                trainer.train_step()
    finally:
        shutdown()
    counts = counter.get_flop_counts()["Global"]
    Path(result).write_text(json.dumps({"flops": sum(counts.values()),
                                        "attention_flops": sum(n for op, n in counts.items() if op in formulas)}))


# -- runs --------------------------------------------------------------------------------------------

def summarize(steps: list[dict[str, Any]]) -> dict[str, Any]:
    """Real tokens per second over the timed steps (all but the first, the warm-up)."""
    timed = steps[1:]
    wall, tokens = sum(s["wall_s"] for s in timed), sum(s["real_tokens"] for s in timed)
    cpu = sum(s["cpu_s"] for s in timed)
    return {"real_tokens_per_s": tokens / wall, "real_tokens_per_s_cpu": tokens / cpu if cpu else None,
            "step_wall_s_median": statistics.median(s["wall_s"] for s in timed), "real_tokens": tokens,
            "timed_steps": len(timed)}


def _child_env() -> dict[str, str]:
    """The engine without torchrun (1 process), 2 threads."""
    env = {k: v for k, v in os.environ.items() if k not in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE")}
    env["OMP_NUM_THREADS"] = str(THREADS)
    return env


def run_arm(arm: str, cfg_file: Path, tmp: Path) -> dict[str, Any]:
    """One run of an arm in its own process with 2 threads (the engine without torchrun: 1 process)."""
    result = tmp / f"{arm}.result.json"
    if arm.startswith("transformers"):
        cmd = [sys.executable, __file__, "--hf-worker", str(cfg_file), str(result), str(int("lf_" in arm))]
    else:
        cmd = [sys.executable, __file__, "--engine-worker", str(cfg_file), str(result), str(THREADS)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_child_env())
    if proc.returncode:
        raise RuntimeError(f"{arm} run failed:\n{proc.stderr[-3000:]}")
    return summarize(json.loads(result.read_text())["steps"])


def count_flops(arm: str, cfg_file: Path, tmp: Path) -> dict[str, Any]:
    """An engine arm's FLOPs over its timed steps (``flops_worker``, its own process)."""
    result = tmp / f"{arm}.flops.json"
    proc = subprocess.run([sys.executable, __file__, "--flops-worker", str(cfg_file), str(result)],
                          capture_output=True, text=True, env=_child_env())
    if proc.returncode:
        raise RuntimeError(f"{arm} FLOP count failed:\n{proc.stderr[-3000:]}")
    return json.loads(result.read_text())


def rounds(arms: list[str], n: int, configs: dict[str, Path], tmp: Path) -> dict[str, list[dict[str, Any]]]:
    """``n`` rounds of every arm, in ABBA order so a drift in machine load hits both sides alike."""
    runs: dict[str, list[dict[str, Any]]] = {a: [] for a in arms}
    for r in range(n):
        for arm in (arms if r % 2 == 0 else arms[::-1]):
            runs[arm].append(run_arm(arm, configs[arm], tmp))
            print(f"  round {r + 1}/{n} {arm}: {runs[arm][-1]['real_tokens_per_s']:.0f} real tokens/s", flush=True)
    return runs


def ceiling(flops: dict[str, dict[str, Any]], ours: str, base: str) -> dict[str, Any]:
    """The baseline's FLOPs over ours: the ratio a step time proportional to its FLOPs would give; also
    without attention (what torch's counter alone reports on CPU, so an overstatement)."""
    o, b = flops[ours], flops[base]
    return {"ceiling": b["flops"] / o["flops"],
            "ceiling_without_attention": (b["flops"] - b["attention_flops"]) / (o["flops"] - o["attention_flops"]),
            "ours_flops": o["flops"], "baseline_flops": b["flops"],
            "ours_attention_share": o["attention_flops"] / o["flops"],
            "baseline_attention_share": b["attention_flops"] / b["flops"]}


def compare(runs: dict[str, list[dict[str, Any]]], ours: str, base: str, goal: float) -> dict[str, Any]:
    """Per-round ratios of ours over the baseline (same round), their mean and spread, against the goal."""
    ratios = [o["real_tokens_per_s"] / b["real_tokens_per_s"] for o, b in zip(runs[ours], runs[base], strict=True)]
    mean = statistics.fmean(ratios)
    cpu = [o["real_tokens_per_s_cpu"] / b["real_tokens_per_s_cpu"] for o, b in zip(runs[ours], runs[base], strict=True)]
    return {"ours": ours, "baseline": base, "goal": goal, "ratios": ratios, "ratio": mean,
            "ratio_cpu_time": statistics.fmean(cpu),  # a check on load from other jobs, never the ratio
            "ratio_std": statistics.stdev(ratios) if len(ratios) > 1 else 0.0, "goal_met": mean >= goal,
            "ours_real_tokens_per_s": statistics.median(r["real_tokens_per_s"] for r in runs[ours]),
            "baseline_real_tokens_per_s": statistics.median(r["real_tokens_per_s"] for r in runs[base])}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smaller images and vocabulary, 1 round (about a minute)")
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 5; --quick 1)")
    p.add_argument("--settings", default=",".join(name for name, *_ in SETTINGS),
                   help="comma-separated settings to run (default: all): " + ", ".join(n for n, *_ in SETTINGS))
    p.add_argument("--out", default=str(HERE / "results" / "peer_step.json"))
    args = p.parse_args()
    chosen = [s for s in SETTINGS if s[0] in args.settings.split(",")]
    unknown = set(args.settings.split(",")) - {name for name, *_ in SETTINGS}
    if unknown:
        p.error(f"--settings: unknown {', '.join(sorted(unknown))}; valid: {', '.join(n for n, *_ in SETTINGS)}")
    import yaml

    work = workload(args.quick)
    if args.rounds:
        work["rounds"] = args.rounds
    hf = model_config(work["vocab"])
    params = parameter_count(hf)
    wide_params = parameter_count(wide_config(work))
    print(f"peer model: {params / 1e6:.2f}M parameters (hidden 96, ViT 192, 4+4 layers, vocab {work['vocab']}, tied); "
          f"(e)'s wider model: {wide_params / 1e6:.2f}M")
    arms = list(dict.fromkeys(a for _, ours, base, _ in chosen for a in (ours, base)))
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        configs = {}
        for arm in arms:
            configs[arm] = tmp / f"{arm}.yaml"
            configs[arm].write_text(yaml.safe_dump(arm_config(arm, hf, work, tmp)))
        flops = {}
        for arm in dict.fromkeys(a for _, ours, base, _ in chosen if base.startswith("engine") for a in (ours, base)):
            flops[arm] = count_flops(arm, configs[arm], tmp)
            print(f"  {arm}: {flops[arm]['flops'] / 1e9:.1f} GFLOP over the timed steps "
                  f"({flops[arm]['attention_flops'] / flops[arm]['flops']:.0%} attention)", flush=True)
        runs = rounds(arms, work["rounds"], configs, tmp)
    settings = {name: compare(runs, ours, base, goal) for name, ours, base, goal in chosen}
    for name, ours, base, _ in chosen:
        if ours in flops and base in flops:
            settings[name].update(ceiling(flops, ours, base))
    res = {"config": {"quick": args.quick, "params": params, "wide_params": wide_params,
                      "threads_per_side": THREADS, "dtype": "fp32",
                      "image_tokens": (work["image_px"] // 28) ** 2, "global_batch": 2, **work,
                      "seconds": round(time.perf_counter() - t0, 1)},
           "basis": "real (non-padding) input tokens per second of wall clock over the timed steps, "
                    "2 threads on each side, the same samples in the same order",
           "ceiling_basis": "the baseline's FLOPs over ours on the same timed steps (FlopCounterMode; attention "
                            "counted by mm_core.kernels.attention_flops, causal pairs only)",
           "settings": settings, "runs": runs, "flops": flops}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2))
    parts = [f"{n} {s['ratio']:.2f}x ± {s['ratio_std']:.2f} (goal {s['goal']:g}, {'met' if s['goal_met'] else 'MISSED'}"
             + (f"; ceiling {s['ceiling']:.2f}x by FLOPs)" if "ceiling" in s else ")") for n, s in settings.items()]
    print(f"peer_step ({params / 1e6:.2f}M params, real tokens/s, {THREADS} threads each, {work['rounds']} "
          f"round(s), {res['config']['seconds']:.0f} s): " + "; ".join(parts) + f" -> {args.out}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--engine-worker":
        from train_step import engine_worker  # the same engine worker as bench/train_step.py

        engine_worker(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    elif len(sys.argv) > 1 and sys.argv[1] == "--hf-worker":
        hf_worker(sys.argv[2], sys.argv[3], sys.argv[4] == "1")
    elif len(sys.argv) > 1 and sys.argv[1] == "--flops-worker":
        flops_worker(sys.argv[2], sys.argv[3])
    else:
        main()

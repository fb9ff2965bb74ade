"""Conversion throughput and memory on a checkpoint with a real model's shapes (Qwen2.5-VL-3B by default).

    .venv/bin/python bench/convert.py                 # full size: bf16, ~7.5 GB, 2 shards like the Hub
    .venv/bin/python bench/convert.py --scale 0.05    # same widths, fewer layers and rows (seconds)
    .venv/bin/python bench/convert.py --model glm4_1v_9b --scale 0.25   # GLM-4.1V-9B widths, 6 + 10 layers
    .venv/bin/python bench/convert.py --model glm4_5v --scale 0.065     # GLM-4.5V widths, 2 ViT + 1 dense + 2 MoE layers

The models and their shapes are in convert_models.py (``--model``: one of its MODELS).

Builds a random bf16 checkpoint (sharded with an index, tied embeddings like the 3B), then times,
each in its own process so peak RSS is that step's alone:
  1. ``cp -r`` of the HF directory on the same disk (the physical reference);
  2. ``hf_to_mm`` with tp 2 (tp 1 for GLM-4.5V: every tp rank would repeat the experts), pp 2
     (vit [32,0], llm [16,20] at full size);
  3. ``mm_to_hf`` back (the layout read from the mm dir), then a bit-exact comparison;
  4. for GLM-4.5V, ``ExpertMergeDcpConverter`` ``hf_to_dcp`` and ``dcp_to_hf`` back, then the same
     two verbs of the model's own converter (``dcp``), each bit-exact too;
  5. a naive baseline: load the whole state dict, rename every key, save it (what the reference
     tools do); by default at a reduced size (``--naive-scale``) so it fits in memory beside
     other work; its figures are reported per GB, and the ratio against ours per GB too (not for
     GLM-4.5V, whose checkpoint with two MoE layers is 12.8 GB).
With fewer layers than the real model, ``full_model`` holds the real model's size and the times
the measured GB/s give it, labelled ``extrapolated``; conversions stream tensor by tensor (a stack
of experts a block at a time), so the peak RSS carries over unchanged.
Page cache is not dropped (no root); writes are not fsynced by any of the candidates.
Prints one summary line and writes JSON (default bench/results/convert.json). All generated
files live under ``--workdir`` and are removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch
from convert_models import MODELS, BenchModel


def build(hf: Path, model: BenchModel, scale: float) -> int:
    """Random bf16 weights, streamed into Hub-like shards (~4 GB each) with an index."""
    from mm_core.checkpoint.hf import HFWriter

    hf.mkdir(parents=True)
    cfg = model.config(scale)
    (hf / "config.json").write_text(json.dumps(cfg, indent=2))
    (hf / "tokenizer_config.json").write_text('{"model_max_length": 32768}\n')
    spec = model.shapes(cfg)
    total = sum(torch.Size(s).numel() * 2 for s in spec.values())
    writer = HFWriter(hf, {k: (s, torch.bfloat16) for k, s in spec.items()}, max_shard_bytes=min(4 * 10**9, total // 2 + 1))
    gen = torch.Generator().manual_seed(0)
    pool = torch.randn(1 << 25, generator=gen).to(torch.bfloat16)  # 64 MB, tiled with offsets
    offset = 0
    for k, s in spec.items():
        n = torch.Size(s).numel()
        reps = -(-(offset + n) // pool.numel())
        t = (pool.repeat(reps) if reps > 1 else pool)[offset:offset + n]
        writer.write(k, t.reshape(s))
        offset = (offset + 7919 * (n % 997 + 1)) % pool.numel()
    writer.close()
    return total


def dir_bytes(d: Path) -> int:
    return sum(p.stat().st_size for p in d.rglob("*") if p.is_file())


# -- steps, each run in a child process (``--step``) -------------------------------------------


def step(name: str, model: BenchModel, a: list[str]) -> dict:
    torch.set_num_threads(1)
    from mm_convert import engine
    from mm_convert.config import HFConfigSection, HfToMmConfig, MmToHfConfig, ParallelSection
    from mm_core.checkpoint import api

    conv = api.get_converter(model.converter)
    t0 = time.perf_counter()
    if name == "hf_to_mm":
        hf, mm, vit, llm = a[0], a[1], json.loads(a[2]), json.loads(a[3])
        engine.hf_to_mm(conv, HfToMmConfig(mm_dir=mm, hf_config=HFConfigSection(hf),
                                           parallel_config=ParallelSection(model.tp, vit, llm)), progress=False)
    elif name == "mm_to_hf":
        engine.mm_to_hf(conv, MmToHfConfig(mm_dir=a[0], save_hf_dir=a[1]), progress=False)
    elif name == "hf_to_dcp":
        conv.hf_to_dcp(hf_dir=a[0], save_dir=a[1])
    elif name == "dcp_to_hf":
        conv.dcp_to_hf(hf_dir=a[0], dcp_dir=a[1], save_dir=a[2])
    elif name == "merge_hf_to_dcp":
        api.get_converter("ExpertMergeDcpConverter").hf_to_dcp(hf_dir=a[0], save_dir=a[1])
    elif name == "merge_dcp_to_hf":
        api.get_converter("ExpertMergeDcpConverter").dcp_to_hf(hf_dir=a[0], dcp_dir=a[1], save_dir=a[2])
    elif name == "verify":
        from mm_core.checkpoint.hf import HFReader

        x, y = HFReader(a[0], conv.hf_aliases), HFReader(a[1], conv.hf_aliases)
        assert x.keys() == y.keys(), sorted(x.keys() ^ y.keys())[:5]
        bad = [k for k in x.order if not torch.equal(x.read(k), y.read(k))]
        assert not bad, bad[:5]
    elif name == "naive":
        from safetensors.torch import load_file, save_file

        hf, out = Path(a[0]), Path(a[1])
        state: dict[str, torch.Tensor] = {}
        for f in sorted(hf.glob("*.safetensors")):
            state.update(load_file(f))
        renamed = {"mm." + k: v for k, v in state.items()}
        out.mkdir()
        save_file(renamed, out / "model.safetensors")
    secs = time.perf_counter() - t0
    return {"seconds": secs, "peak_rss_bytes": peak_rss()}


def peak_rss() -> int:
    """This process's resident high-water mark (VmHWM; ru_maxrss survives exec, so it would
    include the parent's peak)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def timed_cp(work: Path) -> float:
    t0 = time.perf_counter()
    subprocess.run(["cp", "-r", str(work / "hf"), str(work / "cp")], check=True)
    secs = time.perf_counter() - t0
    shutil.rmtree(work / "cp")
    return secs


def child(name: str, model: str, *args: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--model", model, "--step", name, *args], check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_steps(work: Path, name: str, model: BenchModel, args: argparse.Namespace, res: dict) -> int:
    """Build the checkpoint and time every step into ``res``; returns the checkpoint's bytes."""
    t0 = time.perf_counter()
    size = build(work / "hf", model, args.scale)
    res["build_seconds"] = time.perf_counter() - t0
    res["model_bytes"] = size
    depth, layers = model.counts(model.config(args.scale))
    res["layers"] = {"vision": depth, "text": layers}
    vit, llm = [depth, 0], [layers * 4 // 9, layers - layers * 4 // 9]
    res["layout"] = {"vit_pp_layers": vit, "llm_pp_layers": llm}
    res["cp_seconds_runs"] = [timed_cp(work)]
    r = child("hf_to_mm", name, str(work / "hf"), str(work / "mm"), json.dumps(vit), json.dumps(llm))
    res["hf_to_mm"] = dict(r, bytes_written=dir_bytes(work / "mm"))
    r = child("mm_to_hf", name, str(work / "mm"), str(work / "back"))
    res["mm_to_hf"] = dict(r, bytes_written=dir_bytes(work / "back"))
    shutil.rmtree(work / "mm")
    res["bit_exact"] = bool(child("verify", name, str(work / "hf"), str(work / "back")))
    shutil.rmtree(work / "back")
    if model.expert_merge:  # the DCP verbs: the reference's merged layout, then the converter's own
        for prefix, key in (("merge_", "expert_merge"), ("", "dcp")):
            r = child(f"{prefix}hf_to_dcp", name, str(work / "hf"), str(work / "dcp"))
            out = {"hf_to_dcp": dict(r, bytes_written=dir_bytes(work / "dcp"))}
            r = child(f"{prefix}dcp_to_hf", name, str(work / "hf"), str(work / "dcp" / "release"), str(work / "back"))
            out["dcp_to_hf"] = dict(r, bytes_written=dir_bytes(work / "back"))
            shutil.rmtree(work / "dcp")
            out["bit_exact"] = bool(child("verify", name, str(work / "hf"), str(work / "back")))
            shutil.rmtree(work / "back")
            res[key] = out
    res["cp_seconds_runs"].append(timed_cp(work))  # again, after: the load of the machine varies
    res["cp_seconds"] = sum(res["cp_seconds_runs"]) / 2
    if model.naive:
        naive_scale = args.naive_scale if args.naive_scale is not None else min(args.scale, 0.25)
        if naive_scale != args.scale:
            shutil.rmtree(work / "hf")
            naive_bytes = build(work / "hf", model, naive_scale)
        else:
            naive_bytes = size
        r = child("naive", name, str(work / "hf"), str(work / "naive"))
        res["naive"] = dict(r, scale=naive_scale, model_bytes=naive_bytes)
    return size


def rates(res: dict, model: BenchModel, size: int) -> None:
    """GB/s of every step, the naive ratios and, with layers dropped, the full model's extrapolated times."""
    gb = size / 1e9
    cp_gbs = gb / res["cp_seconds"]
    res["cp_gb_per_s"] = cp_gbs
    timed = [res["hf_to_mm"], res["mm_to_hf"], *[res[d][k] for d in ("expert_merge", "dcp") if d in res
                                                 for k in ("hf_to_dcp", "dcp_to_hf")]]
    for r in timed:
        r["gb_per_s"] = gb / r["seconds"]
        r["vs_cp"] = r["gb_per_s"] / cp_gbs
    if "naive" in res:
        n = res["naive"]
        n["gb_per_s"] = n["model_bytes"] / 1e9 / n["seconds"]
        n["peak_rss_per_model_byte"] = n["peak_rss_bytes"] / n["model_bytes"]
        res["ours_vs_naive_speed"] = res["hf_to_mm"]["gb_per_s"] / n["gb_per_s"]
        res["naive_vs_ours_rss_at_this_size"] = n["peak_rss_per_model_byte"] * size / res["hf_to_mm"]["peak_rss_bytes"]
    if res["layers"] != res["real_layers"]:
        full = sum(torch.Size(s).numel() * 2 for s in model.shapes(model.config(1.0)).values())
        steps = {"hf_to_mm": res["hf_to_mm"], "mm_to_hf": res["mm_to_hf"]}
        steps.update({f"{d}_{k}": v for d in ("expert_merge", "dcp") for k, v in res.get(d, {}).items()
                      if isinstance(v, dict)})
        res["full_model"] = {
            "label": f"extrapolated from {res['layers']} to {res['real_layers']} layers at the measured GB/s; peak RSS "
                     "as measured (streamed tensor by tensor, experts a block at a time: it does not grow with layers)",
            "extrapolated": True, "model_bytes": full, "layers": res["real_layers"],
            **{f"{k}_seconds_extrapolated": full / 1e9 / v["gb_per_s"] for k, v in steps.items()},
            **{f"{k}_peak_rss_bytes_extrapolated": v["peak_rss_bytes"] for k, v in steps.items()}}


def summary(res: dict, model: BenchModel, size: int) -> str:
    gib, r = 1024**3, res
    parts = [f"convert {model.title} {size / 1e9:.2f} GB (scale {r['scale']}, tp{r['tp']} pp2)"]
    steps = [("hf_to_mm", r["hf_to_mm"]), ("mm_to_hf", r["mm_to_hf"])]
    steps += [(f"{'merge ' if d == 'expert_merge' else ''}{k}", r[d][k]) for d in ("expert_merge", "dcp") if d in r
              for k in ("hf_to_dcp", "dcp_to_hf")]
    parts += [f"{k} {v['seconds']:.1f}s {v['gb_per_s']:.2f} GB/s rss {v['peak_rss_bytes'] / gib:.2f} GiB" for k, v in steps]
    parts.append(f"cp {r['cp_gb_per_s']:.2f} GB/s")
    if "naive" in r:
        parts.append(f"naive {r['naive']['gb_per_s']:.2f} GB/s rss {r['naive']['peak_rss_per_model_byte']:.2f}x model")
    exact = r["bit_exact"] and all(r.get(d, {}).get("bit_exact", True) for d in ("expert_merge", "dcp"))
    parts.append(f"bit-exact {exact}")
    if "full_model" in r:
        f = r["full_model"]
        parts.append(f"full model {f['model_bytes'] / 1e9:.0f} GB EXTRAPOLATED: hf_to_mm "
                     f"{f['hf_to_mm_seconds_extrapolated'] / 60:.0f} min, mm_to_hf {f['mm_to_hf_seconds_extrapolated'] / 60:.0f} min")
    return " | ".join(parts)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="qwen2_5_vl_3b", choices=sorted(MODELS), help="which real model's shapes")
    ap.add_argument("--scale", type=float, default=1.0,
                    help="fraction of the layers (1 = the real model; below 0.1 the vocabulary shrinks too, "
                         "except for glm4_5v)")
    ap.add_argument("--naive-scale", type=float, default=None,
                    help="scale of the naive baseline (default: min(scale, 0.25): it holds the model in memory about twice)")
    ap.add_argument("--workdir", default=None, help="where the multi-GB files go (default: bench/.convert_tmp)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "convert.json"))
    ap.add_argument("--step", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.step:
        print(json.dumps(step(args.step[0], MODELS[args.model], args.step[1:])))
        return 0
    work = Path(args.workdir or Path(__file__).parent / ".convert_tmp")
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    model = MODELS[args.model]
    res: dict = {"model": model.title, "converter": model.converter, "scale": args.scale, "tp": model.tp, "pp": 2,
                 "real_layers": {"vision": model.layers[0], "text": model.layers[1]}, "cpus": os.cpu_count(),
                 "load_avg_at_start": os.getloadavg()[0]}
    try:
        size = run_steps(work, args.model, model, args, res)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rates(res, model, size)
    res["load_avg_at_end"] = os.getloadavg()[0]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
    print(summary(res, model, size))
    return 0


if __name__ == "__main__":
    sys.exit(main())

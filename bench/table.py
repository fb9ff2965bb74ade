"""How each benchmark's JSON reads as table rows, and the markdown table of stored records.

Kept apart from run_all.py (which runs the benchmarks) so the table can be rebuilt, and tested,
from stored JSON alone. A stored record is ``{"provenance": {...}, "results": <the benchmark's
JSON>}``, or, for figures transcribed from an earlier session, ``{"provenance": {...}, "rows":
[{"figure", "value", "baseline", "ratio"}, ...]}`` shown as written.
"""

from __future__ import annotations

from typing import Any

Row = tuple[str, str, str, str]  # (figure, value, baseline, ratio)


def _get(d: dict[str, Any], path: str, default: Any = None) -> Any:
    for key in path.split("."):
        if not isinstance(d, dict) or key not in d:
            return default
        d = d[key]
    return d


def _f(x: Any, fmt: str = ".2f", unit: str = "") -> str:
    return "n/a" if x is None else f"{x:{fmt}}{unit}"


def _ratio(x: Any) -> str:
    return "n/a" if x is None else f"{x:.2f}x"


# -- each benchmark's JSON -> rows ----------------------------------------------------------------

def _convert_size(r: dict[str, Any]) -> str:
    """The checkpoint's size, and, when layers were dropped, that the figures extrapolate."""
    gb = _get(r, "model_bytes", 0) / 1e9
    built, real = _get(r, "layers"), _get(r, "real_layers")
    if built and real and built != real:
        return (f"{gb:.1f} GB: {built['vision']} of {real['vision']} ViT and {built['text']} of {real['text']} LLM "
                "layers at real widths; GB/s and peak RSS **extrapolate** to the full model (streamed per tensor)")
    return f"{gb:.1f} GB, scale {_get(r, 'scale')}"


def _convert_rows(r: dict[str, Any]) -> list[Row]:
    rows = [
        (f"hf_to_mm tp2 pp2 ({_convert_size(r)})", _f(_get(r, "hf_to_mm.gb_per_s"), ".2f", " GB/s"),
         f"`cp` {_f(_get(r, 'cp_gb_per_s'), '.2f', ' GB/s')}", _ratio(_get(r, "hf_to_mm.vs_cp"))),
        ("mm_to_hf back (bit-exact: " + str(_get(r, "bit_exact")) + ")", _f(_get(r, "mm_to_hf.gb_per_s"), ".2f", " GB/s"),
         f"`cp` {_f(_get(r, 'cp_gb_per_s'), '.2f', ' GB/s')}", _ratio(_get(r, "mm_to_hf.vs_cp"))),
    ]
    rss = _get(r, "hf_to_mm.peak_rss_bytes")
    rows.append(("hf_to_mm peak RSS", _f(rss / 2**30 if rss else None, ".2f", " GiB"), "goal 2 GiB",
                 _ratio(rss / 2**31 if rss else None)))
    rows.append(("speed vs naive load-rename-save (per GB)", _f(_get(r, "hf_to_mm.gb_per_s"), ".2f", " GB/s"),
                 f"naive {_f(_get(r, 'naive.gb_per_s'), '.2f', ' GB/s')}", _ratio(_get(r, "ours_vs_naive_speed"))))
    return rows


def _gib(x: Any) -> str:
    return _f(x / 2**30 if x else None, ".2f", " GiB")


def _convert_moe_rows(r: dict[str, Any]) -> list[Row]:
    """GLM-4.5V: GlmConverter's mm verbs (tp 1: tp ranks would repeat the experts), then both
    converters' DCP verbs against the 2 GiB goal, then the full model's times, extrapolated."""
    cp = f"`cp` {_f(_get(r, 'cp_gb_per_s'), '.2f', ' GB/s')}"
    layout = f"tp{_get(r, 'tp')} pp{_get(r, 'pp')}"
    rows: list[Row] = []
    steps = [("hf_to_mm", f"GlmConverter hf_to_mm {layout} ({_convert_size(r)})", "hf_to_mm"),
             ("mm_to_hf", f"GlmConverter mm_to_hf (bit-exact: {_get(r, 'bit_exact')})", "mm_to_hf")]
    for d, who in (("dcp", "GlmConverter"), ("expert_merge", "ExpertMergeDcpConverter")):
        exact = _get(r, f"{d}.bit_exact")
        steps += [(f"{d}.hf_to_dcp", f"{who} hf_to_dcp", f"{d}_hf_to_dcp"),
                  (f"{d}.dcp_to_hf", f"{who} dcp_to_hf (bit-exact: {exact})", f"{d}_dcp_to_hf")]
    full = _get(r, "full_model") or {}
    for path, label, full_key in steps:
        rows.append((label, _f(_get(r, f"{path}.gb_per_s"), ".2f", " GB/s"), cp, _ratio(_get(r, f"{path}.vs_cp"))))
        rss = _get(r, f"{path}.peak_rss_bytes")
        rows.append((f"{label.split(' (')[0]} peak RSS", _gib(rss), "goal 2 GiB", _ratio(rss / 2**31 if rss else None)))
        secs = full.get(f"{full_key}_seconds_extrapolated")
        if secs is not None:
            rows.append((f"{label.split(' (')[0]}, full {full['layers']['text']}-layer model "
                         f"({full['model_bytes'] / 1e9:.0f} GB), **extrapolated**", _f(secs / 60, ".0f", " min"),
                         "-", "-"))
    return rows


def _qwen_step_rows(r: dict[str, Any]) -> list[Row]:
    basis = _get(r, "tokens_per_s_basis", "")
    return [
        (f"fwd+bwd tokens/s ({_get(r, 'dtype')}, {_get(r, 'threads')} thread(s); {basis})",
         _f(_get(r, "ours.tokens_per_s"), ".0f"), f"transformers {_f(_get(r, 'transformers.tokens_per_s'), '.0f')}",
         _ratio(_get(r, "speedup"))),
        ("fwd+bwd peak memory", _f(_get(r, "ours.peak_mem_mb"), ".0f", " MB"),
         f"transformers {_f(_get(r, 'transformers.peak_mem_mb'), '.0f', ' MB')}", _ratio(_get(r, "memory_ratio"))),
    ]


def _data_rows(r: dict[str, Any]) -> list[Row]:
    rows = []
    for w in ("workers_0", "workers_2"):
        rows.append((f"image records/s, {w.replace('_', ' ')} ({_get(r, 'image_px')} JPEG)",
                     _f(_get(r, f"images.{w}.ours.samples_per_s"), ".1f"),
                     f"open-twice {_f(_get(r, f'images.{w}.open_twice_baseline.samples_per_s'), '.1f')}",
                     _ratio(_get(r, f"images.{w}.speedup"))))
    rows.append(("video records/s, 0 workers", _f(_get(r, "videos.workers_0.samples_per_s"), ".1f"), "-", "-"))
    eff = _get(r, "packing.efficiency")
    rows.append(("packing efficiency (real / row tokens)", _f(100 * eff if eff else None, ".1f", "%"), "goal 95%",
                 _ratio(eff / 0.95 if eff else None)))
    return rows


def _train_step_rows(r: dict[str, Any]) -> list[Row]:
    t = _get(r, "throughput", {})
    best = _get(t, "transformers_best")
    tf = _get(t, best or "", {})
    base = (f"transformers loop, 1 process x 2 threads (best of micro-batch 1 x 2 accumulated and 2 x 1: "
            f"{'2 x 1' if _get(tf, 'micro_batch_size') == 2 else '1 x 2'}) {_f(_get(tf, 'real_tokens_per_s'), '.0f')}")
    e1, e2 = _get(t, "engine_1proc_2threads", {}), _get(t, "engine_dp2_2proc_1thread", {})
    ce = _get(r, "ce_memory", {})
    full = f"full logits {_f(_get(ce, 'full_growth_gb_scaled'), '.2f', ' GB')}"
    if _get(ce, "full_measured_tokens") != _get(ce, "tokens"):
        full += (f", **extrapolated** linearly from {_get(ce, 'full_measured_tokens'):,} tokens "
                 f"({_f(_get(ce, 'full_growth_gb_measured'), '.2f', ' GB')} measured)")
    cfg = _get(r, "config", {})
    work = f"hidden {_get(cfg, 'hidden')}, seq {_get(cfg, 'seq')}, {_get(cfg, 'images')} image{'' if _get(cfg, 'images') == 1 else 's'}, batch 2, fp32"
    return [
        (f"training real tokens/s, wall clock: engine 1 process x 2 threads ({work})",
         _f(_get(e1, "real_tokens_per_s"), ".0f"), base, _ratio(_get(t, "ratio_engine_1proc_vs_transformers_best"))),
        ("same, engine dp=2: 2 processes x 1 thread (the same 2 threads, split over processes)",
         _f(_get(e2, "real_tokens_per_s"), ".0f"), base, _ratio(_get(t, "ratio_engine_dp2_vs_transformers_best"))),
        ("training peak RSS, engine 1 process", _f(_get(e1, "peak_rss_gb_rank0"), ".2f", " GB"),
         f"transformers {_f(_get(tf, 'peak_rss_gb'), '.2f', ' GB')}",
         _ratio(_get(e1, "peak_rss_gb_rank0") / _get(tf, "peak_rss_gb") if _get(tf, "peak_rss_gb") else None)),
        (f"CE peak memory, chunked (V={_get(ce, 'vocab')}, T={_get(ce, 'tokens')})",
         _f(_get(ce, "chunk_growth_gb"), ".2f", " GB"), full, _ratio(_get(ce, "chunk_over_full"))),
    ]


def _goal_ratio(s: dict[str, Any]) -> str:
    """A setting's ratio, its spread over rounds and its goal, e.g. ``1.02x ± 0.03; goal >= 1.05x: missed``."""
    ratio, goal = _get(s, "ratio"), _get(s, "goal")
    if ratio is None:
        return "n/a"
    met = "met" if ratio >= goal else "**missed**"
    ceiling = _get(s, "ceiling")  # peer_step: the baseline's FLOPs over ours, what time following FLOPs would give
    bound = f"; ceiling {ceiling:.2f}x by FLOPs" if ceiling is not None else ""
    return f"{ratio:.2f}x ± {_get(s, 'ratio_std', 0):.2f}; goal >= {goal:.2f}x: {met}{bound}"


def _peer_step_rows(r: dict[str, Any]) -> list[Row]:
    c, s = _get(r, "config", {}), _get(r, "settings", {})
    text = _get(c, "text", [0, 0])
    per_sample = (text[0] + text[1]) // 2 + _get(c, "image_tokens", 0) + 2
    work = (f"{_f(_get(c, 'params', 0) / 1e6, '.1f')}M params, {_get(c, 'image_px')} px images, "
            f"~{per_sample} real tokens a sample, batch 2, fp32, {_get(c, 'threads_per_side')} threads on each side, "
            f"wall clock, {_get(c, 'rounds')} interleaved round(s)")
    tf = "transformers loop (fused AdamW)"
    mix = _get(c, "mix_text", [0, 0])
    mix_work = (f"{mix[0]}-{mix[1] + _get(c, 'image_tokens', 0) + 2} tokens a sample, log-normal, half with an image; "
                f"{_get(c, 'mix_batch')} a step")
    spec = [
        ("full", f"(a) everything trainable: engine real tokens/s ({work})", tf),
        ("lf_defaults", "(b) LLaMA-Factory's defaults: ViT and merger frozen, activation recompute on both sides", tf),
        ("packing", f"(c) packed, 2 samples per {_get(c, 'row')}-token row (same samples per step)", "engine padded"),
        ("length_mix", f"(d) length mix ({mix_work}): packed into {_get(c, 'mix_row')}-token rows; this model's "
                       "step is mostly the LM head on loss tokens, which padding never reaches", "engine padded"),
        ("length_mix_wide", f"(e) same mix on a model whose LLM layers dominate ("
                            f"{_f(_get(c, 'wide_params', 0) / 1e6, '.1f')}M params: hidden "
                            f"{_get(c, 'wide.hidden')}, {_get(c, 'wide.layers')} layers, vocab {_get(c, 'wide.vocab')})",
         "engine padded"),
    ]
    return [(fig, _f(_get(s, f"{name}.ours_real_tokens_per_s"), ".0f"),
             f"{base} {_f(_get(s, f'{name}.baseline_real_tokens_per_s'), '.0f')}", _goal_ratio(_get(s, name, {})))
            for name, fig, base in spec]


def _demo_rows(r: dict[str, Any]) -> list[Row]:
    acc, chance = _get(r, "accuracy_after.accuracy"), _get(r, "chance")
    total = _get(r, "total_seconds")
    steps = _get(r, "steps")
    return [
        (f"demo held-out exact match after {steps} steps (before: "
         f"{_f(100 * _get(r, 'accuracy_before.accuracy', 0), '.0f', '%')})", _f(100 * acc if acc is not None else None,
                                                                              ".1f", "%"),
         f"chance {_f(100 * chance if chance else None, '.0f', '%')}; goal 90%",
         _ratio(acc / chance if acc is not None and chance else None)),
        (f"demo total time ({_get(r, 'cpu_threads')} CPU threads)", _f(total, ".0f", " s"), "goal 600 s",
         _ratio(total / 600 if total else None)),
        ("demo training questions/s (median step)", _f(_get(r, "throughput.samples_per_s"), ".1f"), "-", "-"),
        ("demo real (input) tokens/s (median step)", _f(_get(r, "throughput.real_tokens_per_s"), ".0f"), "-", "-"),
        ("demo trained (answer, loss) tokens/s (median step)", _f(_get(r, "throughput.loss_tokens_per_s"), ".0f"),
         "-", "-"),
        ("demo transformers reload: equal greedy answers",
         f"{_get(r, 'hf_check.equal')}/{_get(r, 'hf_check.questions')}", "all", "-"),
    ]


def _gpu_train_rows(r: dict[str, Any]) -> list[Row]:
    auto, fsdp, ref = (_get(r, k, {}) for k in ("engine_auto", "engine_fsdp", "transformers"))
    return [
        (f"1-GPU training tokens/s ({_get(r, 'device')}, bf16, {_f(_get(auto, 'params', 0) / 1e9, '.2f')}B params, "
         f"seq {_get(r, 'workload.seq')}; MFU {_f(100 * _get(auto, 'mfu', 0), '.1f', '%')})",
         _f(_get(auto, "tokens_per_s"), ".0f"), f"transformers loop {_f(_get(ref, 'tokens_per_s'), '.0f')}",
         _ratio(_get(r, "speedup_vs_transformers"))),
        ("same, FSDP2 forced at dp=1 (`parallel.fsdp always`)", _f(_get(fsdp, "tokens_per_s"), ".0f"),
         f"engine default {_f(_get(auto, 'tokens_per_s'), '.0f')}",
         _ratio(1 / _get(r, "speedup_vs_fsdp_at_dp1") if _get(r, "speedup_vs_fsdp_at_dp1") else None)),
        ("1-GPU training peak memory", _f(_get(auto, "peak_memory_gb"), ".1f", " GB"),
         f"transformers {_f(_get(ref, 'peak_memory_gb'), '.1f', ' GB')}", _ratio(_get(r, "memory_ratio_vs_transformers"))),
    ]


def _lora_rows(r: dict[str, Any]) -> list[Row]:
    full, lora = _get(r, "full", {}), _get(r, "lora_run", {})
    mem = "peak_device_gb" if _get(r, "device") == "cuda" else "peak_rss_gb"
    shape = (f"hidden {_get(r, 'model.hidden_size')}, {_get(r, 'model.num_hidden_layers')} LLM layers, "
             f"seq {_get(r, 'work.seq')}, {_get(r, 'device')}, {_get(r, 'threads')} threads")
    return [
        (f"LoRA rank {_get(r, 'lora.rank')} step time (median; {shape})", _f(_get(lora, "step_s_median"), ".3f", " s"),
         f"full fine-tuning {_f(_get(full, 'step_s_median'), '.3f', ' s')}", _ratio(_get(r, "step_time_ratio"))),
        ("LoRA peak memory", _f(_get(lora, mem), ".2f", " GB"), f"full {_f(_get(full, mem), '.2f', ' GB')}",
         _ratio(_get(r, "peak_memory_ratio"))),
        ("LoRA optimizer state", _f(_get(lora, "optimizer_state_mb"), ".1f", " MB"),
         f"full {_f(_get(full, 'optimizer_state_mb'), '.1f', ' MB')}",
         _ratio(_get(lora, "optimizer_state_mb") / _get(full, "optimizer_state_mb")
                if _get(full, "optimizer_state_mb") else None)),
    ]


def _long_context_rows(r: dict[str, Any]) -> list[Row]:
    rss, seq = _get(r, "peak_rss_gb_per_rank", {}), _get(r, "sequence_gb_per_rank", {})
    model = f"hidden {_get(r, 'model.hidden_size')}, {_get(r, 'model.num_hidden_layers')} LLM layers"
    return [
        (f"peak RSS per rank, one {_get(r, 'seq')}-token sample, context parallel 2 ({model}, CPU, fp32)",
         _f(rss.get("2"), ".2f", " GB"), f"cp 1 {_f(rss.get('1'), '.2f', ' GB')}",
         _ratio(rss["2"] / rss["1"] if rss.get("1") and rss.get("2") else None)),
        ("same, memory the sequence costs per rank (activations and transients of a step)",
         _f(seq.get("2"), ".2f", " GB"), f"cp 1 {_f(seq.get('1'), '.2f', ' GB')}",
         _ratio(seq["2"] / seq["1"] if seq.get("1") and seq.get("2") else None)),
        ("same, last loss equal to cp 1", str(_get(r, "losses_equal")), "-", "-"),
    ]


def _load_memory_rows(r: dict[str, Any]) -> list[Row]:
    m = _get(r, "model", {})
    shape = (f"GLM-4.5V widths, {m.get('first_k_dense_replace')} dense + "
             f"{(m.get('num_hidden_layers') or 0) - (m.get('first_k_dense_replace') or 0)} MoE layers of "
             f"{m.get('n_routed_experts')} experts, vocabulary {m.get('vocab_size')}, {_get(r, 'world')} ranks "
             f"{_get(r, 'layout')}")
    per_rank = _get(r, "model_fp32_gb_per_rank")
    growth = _get(r, "max_load_growth_gb")
    return [
        (f"peak RSS growth per rank while loading from the HF dir ({shape})", _f(growth, ".2f", " GB"),
         f"model / world {_f(per_rank, '.2f', ' GB')} (fp32)", _ratio(growth / per_rank if growth and per_rank else None)),
        ("same, peak RSS per rank (with the interpreter and torch)", _f(_get(r, "max_load_peak_rss_gb"), ".2f", " GB"),
         f"whole model {_f(_get(r, 'model_fp32_gb'), '.2f', ' GB')} (fp32)", "-"),
    ]


def _packed_attention_rows(r: dict[str, Any]) -> list[Row]:
    return [(f"packed attention fwd+bwd ({_get(r, 'device')}, {_get(r, 'rows')}x{_get(r, 'seq')} tokens, "
             f"{_get(r, 'samples_per_row')} samples/row)", _f(_get(r, "flash_varlen_ms"), ".2f", " ms"),
             f"masked reference {_f(_get(r, 'masked_reference_ms'), '.2f', ' ms')}", _ratio(_get(r, "speedup")))]


# name -> (title, rows of its JSON); the order is the table's
READERS: dict[str, tuple[str, Any]] = {
    "convert": ("Conversion (Qwen2.5-VL-3B shapes, bf16)", _convert_rows),
    "convert_glm4_1v": ("Conversion (GLM-4.1V-9B shapes, bf16)", _convert_rows),
    "convert_internvl3": ("Conversion (InternVL3-8B shapes, bf16)", _convert_rows),
    "convert_glm4_5v": ("Conversion (GLM-4.5V shapes, bf16, reduced layers)", _convert_moe_rows),
    "qwen_step": ("Model step (mm Qwen2.5-VL vs transformers)", _qwen_step_rows),
    "data": ("Data pipeline", _data_rows),
    "train_step": ("Training step and loss memory", _train_step_rows),
    "peer_step": ("Peer workload (issue 18): small Qwen2.5-VL, engine vs a transformers loop standing in for "
                  "LLaMA-Factory, CPU", _peer_step_rows),
    "lora": ("LoRA vs full fine-tuning (small Qwen2.5-VL)", _lora_rows),
    "long_context": ("Long context: memory per rank with context parallel (small Qwen2.5-VL)", _long_context_rows),
    "load_memory": ("Sharded loading: host memory per rank (GLM-4.5V shapes, CPU, gloo)", _load_memory_rows),
    "demo": ("`mm-run demo` (tiny Qwen2.5-VL from random init, CPU)", _demo_rows),
    "gpu_train": ("One-GPU training step (needs CUDA)", _gpu_train_rows),
    "packed_attention": ("Packed-row attention (needs CUDA)", _packed_attention_rows),
}

NOTES = ["Ratios: ours / baseline (for memory and time, lower is better; for speed and accuracy, higher is",
         "better). A speed ratio compares the same work, thread count and clock on both sides."]


def rows_of(name: str, record: dict[str, Any]) -> list[tuple[Row, dict[str, Any] | None]]:
    """A stored record's rows, each with its own provenance where it has one (transcribed rows may)."""
    if "rows" in record:
        return [((r["figure"], r["value"], r.get("baseline", ""), r.get("ratio", "")), r.get("provenance"))
                for r in record["rows"]]
    return [(row, None) for row in READERS[name][1](record["results"])]


def provenance_cell(p: dict[str, Any]) -> str:
    """Command, date, machine and commit of a record, in one table cell."""
    parts = [f"`{p['command']}`", p["date"], p["machine"], f"commit {p['git_commit']}"]
    if p.get("note"):
        parts.append(p["note"])
    return "; ".join(str(x).replace("|", "/") for x in parts)


def markdown(records: dict[str, dict[str, Any]], missing_note: str = "not recorded") -> str:
    """The table of every benchmark in READERS order; one without a record says so."""
    lines = ["| benchmark | figure | value | baseline | ratio | measured (command; date; machine; commit) |",
             "|---|---|---|---|---|---|"]
    for name, (title, _) in READERS.items():
        record = records.get(name)
        if record is None:
            lines.append(f"| {title} | {missing_note} | | | | |")
            continue
        shown = None  # the provenance the rows above stand under: a row repeats it only when it changes
        for i, ((fig, value, base, ratio), own) in enumerate(rows_of(name, record)):
            prov = own or record["provenance"]
            src = provenance_cell(prov) if prov is not shown else ""
            shown = prov
            lines.append(f"| {title if i == 0 else ''} | {fig} | {value} | {base} | {ratio} | {src} |")
    return "\n".join(lines + [""] + NOTES) + "\n"

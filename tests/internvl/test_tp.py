"""InternVL3 at tp 3 trains like one process, with ViT heads and a vocabulary that 3 does not divide.

Two tiny models built for it (4 ViT heads: 2/1/1 per rank, padded to 2; 301 vocabulary rows:
101/100/100, padded to 101; 3 GQA groups): InternViT-300M style (LayerNorm, qkv bias) with sequence
parallel in the LLM, and InternViT-6B style (RMSNorm, q/k norms over all heads, a final norm).
One in-process reference per model, then ONE launch of 3 processes for both runs and the
engine-vs-converter shard comparison of both; two steps each, losses, gradient norms and the
saved (canonical) weights equal one process (rtol 1e-5).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from mm_core.testing.hf_files import read_dcp_model
from mm_core.testing.parallel_checks import ATOL, RTOL, STEPS, finetune_config

pytestmark = pytest.mark.distributed

TP = 3
MODELS = {  # name -> tiny_config_dict overrides
    "vit300m": {},
    "vit6b": {"qk_norm": True},
}
ROWS = [[[("text", 3), ("image", 1), ("text", 4)]], [[("text", 2), ("image", 2), ("text", 5)]]]


def _save(path: Path, **kw) -> Path:
    from mm_internvl.tiny import save_tiny_model

    return save_tiny_model(path, vocab_size=301, vision={"num_attention_heads": 4, "intermediate_size": 48},
                           text={"num_attention_heads": 6, "num_key_value_heads": 3, "hidden_size": 48,
                                 "intermediate_size": 96}, **kw)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    from mm_core.plugins import get_plugin_manager
    from mm_core.testing.train_worker import run_one
    from mm_internvl.tiny import make_inputs

    torch.set_num_threads(1)
    spec = get_plugin_manager().model("internvl")
    root = tmp_path_factory.mktemp("internvl_tp3")
    job = {"batches": {}, "runs": {}, "out": str(root), "tp_shards": {}}
    for name, kw in MODELS.items():
        with torch.random.fork_rng(devices=[]):
            hf = _save(root / f"{name}_hf", **kw)
        cfg = json.loads((hf / "config.json").read_text())
        samples = [make_inputs(cfg, rows, seed=i) for i, rows in enumerate(ROWS)]
        torch.save(samples, root / f"{name}.pt")
        one = root / f"{name}_one.yaml"
        one.write_text(yaml.safe_dump(finetune_config(spec, hf, root / f"{name}_one" / "ckpt")))
        run_one(str(one), samples, root / f"{name}_one")  # the one-process reference, in this process
        tp = root / f"{name}_tp.yaml"
        tp.write_text(yaml.safe_dump(finetune_config(spec, hf, root / f"{name}_tp" / "ckpt", tp=TP,
                                                     sequence_parallel=name == "vit300m")))
        job["batches"][f"{name}_tp"] = str(root / f"{name}.pt")
        job["runs"][f"{name}_tp"] = str(tp)
        job["tp_shards"][name] = str(hf)
    (root / "job.json").write_text(json.dumps(job))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(TP),
           str(Path(__file__).with_name("tp_worker.py")), str(root / "job.json")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, f"the {TP}-process launch failed:\n{proc.stderr[-4000:]}"
    return root


@pytest.mark.parametrize("name", list(MODELS))
def test_tp3_with_uneven_heads_and_vocabulary_equals_one_process(runs, name):
    ref = json.loads((runs / f"{name}_one" / "records.json").read_text())
    got = json.loads((runs / f"{name}_tp" / "records.json").read_text())
    assert [r["loss"] for r in got] == pytest.approx([r["loss"] for r in ref], rel=RTOL)
    assert [r["grad_norm"] for r in got] == pytest.approx([r["grad_norm"] for r in ref], rel=RTOL)
    want = read_dcp_model(runs / f"{name}_one" / "ckpt" / f"iter_{STEPS:07d}")
    have = read_dcp_model(runs / f"{name}_tp" / "ckpt" / f"iter_{STEPS:07d}")
    assert set(want) == set(have)  # canonical names and shapes: no ghost heads or rows saved
    for k, v in want.items():
        torch.testing.assert_close(have[k], v, rtol=RTOL, atol=ATOL, msg=lambda m, k=k: f"{k}: {m}")


@pytest.mark.parametrize("name", list(MODELS))
def test_tp3_engine_shards_equal_the_converter_pieces(runs, name):
    for rank in range(TP):
        bad = json.loads((runs / "tp_shards" / name / f"rank{rank}.json").read_text())
        assert not bad, f"tp rank {rank}: " + "; ".join(bad[:8])

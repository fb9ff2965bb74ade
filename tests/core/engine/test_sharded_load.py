"""Meta-device start and sharded loading (issue 17): one 2-process launch builds a tiny GLM-4.5V
from its HF dir under dp 2 (FSDP2), tp 2, pp 2 and ep 2, and from its mm dir under dp 2, and checks,
per layout and rank, that

- every parameter equals the converter's whole per-rank state (``hf_to_mm_rank``, the dict the
  engine loaded before; the mm rank file): gathered over dp/ep, or the tp rank's piece, bit for bit;
- the rank read from the checkpoint exactly the bytes it holds (dp/ep: half of the stage), which
  is what makes the host memory of a load about the model's size over the world size.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("mm_glm")
WORKER = Path(__file__).parent / "_sharded_load_worker.py"


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    from mm_glm.tiny_moe import save_tiny_model

    tmp = tmp_path_factory.mktemp("sharded_load")
    from mm_convert.cli import main as convert

    hf = save_tiny_model(tmp / "hf")
    assert convert(["GlmConverter", "hf_to_mm", "--cfg.hf_config.hf_dir", str(hf), "--cfg.mm_dir", str(tmp / "mm")]) == 0
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(WORKER),
           str(tmp), str(hf)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-4000:]
    return [json.loads((tmp / f"rank{r}.json").read_text()) for r in range(2)]


@pytest.mark.parametrize("layout", ["dp2", "tp2", "pp2", "ep2", "dp2_mm"])
def test_shards_equal_the_converters_state(results: list[dict], layout: str) -> None:
    for rank, res in enumerate(results):
        assert res[layout]["bad"] == [], f"rank {rank}: {res[layout]['bad'][:5]}"


@pytest.mark.parametrize("layout", ["dp2", "ep2", "dp2_mm"])
def test_a_data_parallel_rank_reads_only_its_half(results: list[dict], layout: str) -> None:
    """Each rank materialises and reads its own rows only: together the ranks hold the stage once,
    but for the (tiny) buffers every rank keeps whole (the fp32 checkpoint's bytes are the
    parameters' bytes)."""
    for res in results:
        r = res[layout]
        assert r["read"] == r["local_bytes"]
    stage = results[0][layout]["stage_bytes"]
    assert sum(res[layout]["local_bytes"] for res in results) == stage + results[0][layout]["buffer_bytes"]
    for res in results:  # about model / world: no rank holds more than half plus one tensor's rows
        assert res[layout]["local_bytes"] <= stage / 2 + res[layout]["largest"]


def test_tp_and_pp_ranks_read_their_piece_only(results: list[dict]) -> None:
    for res in results:
        for layout in ("tp2", "pp2"):
            assert res[layout]["read"] == res[layout]["local_bytes"] == res[layout]["stage_bytes"]

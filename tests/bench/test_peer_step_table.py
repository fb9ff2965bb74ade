"""The peer workload's rows (bench/peer_step.py, issue 18): every setting's ratio with its goal and
whether it is met, the thread layout and clock, and run_all's entry. Fixture JSON only; nothing is run."""

import copy
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

import measured  # noqa: E402
import run_all  # noqa: E402
import table  # noqa: E402

QUICK = json.loads((Path(__file__).parent / "fixtures" / "peer_step_quick.json").read_text())
PROV = {"command": "python bench/peer_step.py", "date": "2026-12-01 04:00 UTC", "machine": "test CPU, 2 CPUs",
        "git_commit": "abc1234"}


def _rows(results: dict) -> list[str]:
    text = table.markdown({"peer_step": {"provenance": PROV, "results": results}})
    return [line for line in text.splitlines() if line.startswith("| ") and line.split("|")[2].strip()[:1] == "("]


def _with_ratios(**ratios: float) -> dict:
    res = copy.deepcopy(QUICK)
    for name, value in ratios.items():
        res["settings"][name]["ratio"] = value
    return res


def test_every_setting_is_a_row_with_its_goal():
    rows = _rows(_with_ratios(full=1.10, lf_defaults=0.98, packing=1.0, length_mix=1.02, length_mix_wide=1.31))
    assert [r.split("|")[2].strip()[:3] for r in rows] == ["(a)", "(b)", "(c)", "(d)", "(e)"]
    a, b, c, d, e = rows
    assert "goal >= 1.05x: met" in a and "transformers loop (fused AdamW)" in a
    assert "goal >= 1.05x: **missed**" in b and "frozen" in b and "recompute" in b
    assert "goal >= 1.00x: met" in c and "engine padded" in c and "2 samples per 384-token row" in c
    assert "goal >= 1.30x: **missed**" in d and "engine padded" in d and "32-512 tokens a sample" in d and "LM head" in d
    assert "goal >= 1.30x: met" in e and "LLM layers dominate" in e and "hidden 256, 4 layers" in e


def test_the_first_row_states_the_workload_and_like_for_like_clock():
    a = _rows(QUICK)[0]
    params = QUICK["config"]["params"] / 1e6
    assert f"{params:.1f}M params" in a and "2 threads on each side" in a and "wall clock" in a
    assert "interleaved round" in a and "batch 2, fp32" in a
    assert "`python bench/peer_step.py`; 2026-12-01 04:00 UTC" in a


def test_a_missing_setting_reads_as_not_available():
    res = copy.deepcopy(QUICK)
    del res["settings"]["length_mix"]
    d = _rows(res)[3]
    assert d.split("|")[5].strip() == "n/a"


def test_run_all_runs_it_quick_and_refuses_to_store_quick_figures(tmp_path):
    cmd = run_all.BENCHES["peer_step"]["cmd"]
    assert cmd(True)[-1] == "--quick" and "--quick" not in cmd(False) and cmd(False)[1].endswith("peer_step.py")
    assert "peer_step" in table.READERS
    quick = tmp_path / "peer_step.json"
    quick.write_text(json.dumps(QUICK))
    with pytest.raises(ValueError, match="--quick"):
        measured.store("peer_step", quick, cmd(False), directory=tmp_path / "m")

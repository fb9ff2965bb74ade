"""bench/RESULTS.md is built from stored JSON alone: the committed table matches its records, an
extrapolated figure and the thread layout of every speed row say so, quick runs are never stored.
Fixture JSON only; nothing is run."""

import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

import measured  # noqa: E402
import run_all  # noqa: E402
import table  # noqa: E402

QUICK = json.loads((Path(__file__).parent / "fixtures" / "train_step_quick.json").read_text())
PROV = {"command": "python bench/train_step.py", "date": "2026-12-01 01:40 UTC", "machine": "test CPU, 2 CPUs",
        "git_commit": "abc1234"}


def test_committed_table_is_generated_from_the_stored_records():
    assert run_all.TABLE.read_text() == run_all.TABLE_HEAD + table.markdown(measured.load_all(),
                                                                            missing_note="no stored record")


def test_train_step_rows_are_like_for_like_and_mark_the_extrapolation():
    text = table.markdown({"train_step": {"provenance": PROV, "results": QUICK}})
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    speed = next(r for r in rows if "engine 1 process x 2 threads" in r)
    assert "transformers loop, 1 process x 2 threads" in speed and "wall clock" in speed
    assert "`python bench/train_step.py`; 2026-12-01 01:40 UTC; test CPU, 2 CPUs; commit abc1234" in speed
    assert any("dp=2: 2 processes x 1 thread" in r for r in rows)
    ce = next(r for r in rows if "CE peak memory" in r)
    assert "**extrapolated** linearly from 512 tokens" in ce
    assert any("| no stored record |" in r or "| not recorded |" in r for r in rows)  # the other benchmarks


def test_transcribed_rows_show_their_own_provenance():
    rec = {"provenance": PROV, "rows": [
        {"figure": "a", "value": "1", "baseline": "", "ratio": ""},
        {"figure": "b", "value": "2", "provenance": {**PROV, "git_commit": "def5678"}},
        {"figure": "c", "value": "3"}]}
    rows = [r for r in table.markdown({"data": rec}).splitlines() if r.startswith("| ") and "| a |" in r
            or "| b |" in r or "| c |" in r]
    assert "abc1234" in rows[0] and "def5678" in rows[1] and "abc1234" in rows[2]


def test_store_stamps_provenance_and_refuses_quick_runs(tmp_path):
    quick = tmp_path / "train_step.json"
    quick.write_text(json.dumps(QUICK))
    with pytest.raises(ValueError, match="--quick"):
        measured.store("train_step", quick, ["python"], directory=tmp_path / "m")
    full = tmp_path / "full.json"
    full.write_text(json.dumps({**QUICK, "config": {**QUICK["config"], "quick": False}}))
    out = measured.store("train_step", full, [sys.executable, str(BENCH / "train_step.py")], directory=tmp_path / "m")
    prov = json.loads(out.read_text())["provenance"]
    assert prov["command"] == "python bench/train_step.py"
    assert prov["date"].endswith("UTC") and prov["machine"] and prov["git_commit"]


def test_glm4_5v_convert_rows_show_both_converters_memory_and_the_extrapolation():
    res = json.loads((Path(__file__).parent / "fixtures" / "convert_glm4_5v.json").read_text())
    rows = [r for r in table.markdown({"convert_glm4_5v": {"provenance": PROV, "results": res}}).splitlines()
            if r.startswith("| ") and ("Converter" in r or "GLM-4.5V" in r)]
    assert "GlmConverter hf_to_mm tp1 pp2" in rows[0] and "0.17 GB/s" in rows[0]  # tp 1, not the dense rows' tp2
    rss = {r.split(" | ")[1]: r.split(" | ")[2] for r in rows if r.split(" | ")[1].endswith("peak RSS")}
    assert rss == {"GlmConverter hf_to_mm tp1 pp2 peak RSS": "0.85 GiB", "GlmConverter mm_to_hf peak RSS": "0.79 GiB",
                   "GlmConverter hf_to_dcp peak RSS": "0.88 GiB", "GlmConverter dcp_to_hf peak RSS": "1.01 GiB",
                   "ExpertMergeDcpConverter hf_to_dcp peak RSS": "2.12 GiB",
                   "ExpertMergeDcpConverter dcp_to_hf peak RSS": "3.74 GiB"}
    full = [r for r in rows if "full 46-layer model (215 GB), **extrapolated**" in r]
    assert len(full) == 6 and "| 43 min |" in next(r for r in full if "ExpertMergeDcpConverter hf_to_dcp" in r)

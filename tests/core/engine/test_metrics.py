"""The metrics file: a header per run, throughput fields named for what they count, the bar's headline."""

from __future__ import annotations

import json
from dataclasses import replace

from mm_core.engine.config import FinetuneConfig
from mm_core.engine.metrics import MetricsLogger
from mm_core.engine.run_header import config_hash, is_step_record, run_header

STEP = {"loss": 1.5, "lr": 1e-3, "real_tokens_per_s": 1280.0, "loss_tokens_per_s": 187.0}


def test_config_hash_follows_the_values():
    a, b = FinetuneConfig(), FinetuneConfig()
    assert config_hash(a) == config_hash(b)
    b.training = replace(b.training, lr=2e-5)
    assert config_hash(a) != config_hash(b)


def test_header_fields_and_step_records_tell_apart():
    h = run_header(FinetuneConfig(), world_size=8, start_step=300, resumed_from="/ckpt/iter_0000300")
    assert h["record"] == "run_header" and h["world_size"] == 8 and h["start_step"] == 300
    assert h["resumed_from"] == "/ckpt/iter_0000300" and len(h["run_id"]) == 12
    assert h["start_time"].endswith("+00:00")  # UTC, ISO 8601
    assert run_header(FinetuneConfig(), 1, 0, None)["run_id"] != h["run_id"]
    assert not is_step_record(h) and is_step_record({"step": 1, **STEP})


def _log_run(path, resumed_from=None, steps=(1, 2)) -> None:
    header = run_header(FinetuneConfig(), 2, steps[0] - 1, resumed_from)
    log = MetricsLogger(enabled=True, total_steps=steps[-1], start_step=steps[0] - 1, log_interval=1,
                        jsonl=str(path), tensorboard_dir=None, progress_bar=False, world_size=2, header=header)
    for s in steps:
        log.log(s, dict(STEP))
    log.close()


def test_each_run_appended_to_one_file_starts_with_its_header(tmp_path, capsys):
    path = tmp_path / "metrics.jsonl"
    _log_run(path)
    _log_run(path, resumed_from="/ckpt/iter_0000002", steps=(3, 4))
    recs = [json.loads(x) for x in path.read_text().splitlines()]
    assert [r.get("record", r.get("step")) for r in recs] == ["run_header", 1, 2, "run_header", 3, 4]
    assert recs[3]["resumed_from"] == "/ckpt/iter_0000002" and recs[3]["start_step"] == 2
    assert "resumed from /ckpt/iter_0000002" in capsys.readouterr().out


def test_progress_bar_shows_real_tokens_per_second(tmp_path, capsys):
    log = MetricsLogger(enabled=True, total_steps=1, start_step=0, log_interval=1, jsonl=None,
                        tensorboard_dir=None, progress_bar=True, world_size=1)
    log.log(1, dict(STEP))
    log.close()
    err = capsys.readouterr().err
    assert "real_tok/s=1280" in err and "187" not in err


def test_console_line_sums_up_the_expert_table_and_the_file_keeps_it(tmp_path, capsys):
    """A 128-expert model's table stays out of the console line (its least and most used expert and
    the load ratio instead); the JSONL record has every count; the bar shows the load ratio."""
    table = {str(layer): [layer * 1000 + e for e in range(128)] for layer in range(1, 4)}
    step = {**STEP, "tokens_per_expert": table, "expert_load_max": 1.87}
    path = tmp_path / "metrics.jsonl"
    log = MetricsLogger(enabled=True, total_steps=1, start_step=0, log_interval=1, jsonl=str(path),
                        tensorboard_dir=None, progress_bar=False, world_size=1)
    log.log(1, dict(step))
    log.close()
    line = capsys.readouterr().out.strip()
    assert "\n" not in line and "tokens_per_expert=" not in line and "[" not in line
    assert "tokens_per_expert_min=1000" in line and "tokens_per_expert_max=3127" in line
    assert "expert_load_max=1.87" in line and "loss=1.5" in line
    assert json.loads(path.read_text())["tokens_per_expert"] == table
    bar = MetricsLogger(enabled=True, total_steps=1, start_step=0, log_interval=1, jsonl=None,
                        tensorboard_dir=None, progress_bar=True, world_size=1)
    bar.log(1, dict(step))
    bar.close()
    err = capsys.readouterr().err
    assert "expert_load_max=1.87" in err and "3127" not in err

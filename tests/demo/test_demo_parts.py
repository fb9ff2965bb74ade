"""Fast checks of the demo's parts: step errors, work directory safety, scoring, settings, config."""

import argparse
import json
import sys
from pathlib import Path

import pytest
import yaml

from mm_core.demo.config import DemoPaths, DemoSettings, finetune_config
from mm_core.demo.evaluate import normalise, score
from mm_core.demo.report import read_metrics, throughput
from mm_core.demo.run import MARKER, prepare_workdir
from mm_core.demo.steps import DemoStepError, StepRunner

REPO = Path(__file__).resolve().parents[2]


def test_a_failing_command_names_the_step_the_command_and_the_log(tmp_path, capsys):
    runner = StepRunner(tmp_path, total=3, verbose=False)
    runner.begin("first", "a step that works")
    runner.run("first", ["python", "-c", "print('hello')"])
    runner.begin("convert", "a step whose command fails")
    with pytest.raises(DemoStepError) as err:
        runner.run("convert", ["python", "-c", "import sys; print('the real reason'); sys.exit(3)"])
    msg = str(err.value)
    assert "step 2/3 'convert'" in msg and "exited with status 3" in msg and "the real reason" in msg
    assert (tmp_path / "logs" / "02_convert.log").is_file() and "the real reason" in msg
    out = capsys.readouterr().out
    assert "[1/3] a step that works" in out and "$ python -c" in out
    assert runner.commands[0].startswith("python -c") and set(runner.timings) == {"first", "convert"}


def test_a_missing_program_is_a_step_error(tmp_path):
    runner = StepRunner(tmp_path, total=1, verbose=False)
    runner.begin("infer", "x")
    with pytest.raises(DemoStepError, match="step 1/1 'infer'.*could not start"):
        runner.run("infer", ["mm-no-such-program-here", "--help"])


def test_workdir_is_never_cleared_unless_the_demo_made_it(tmp_path):
    mine = tmp_path / "notes"
    mine.mkdir()
    (mine / "thesis.txt").write_text("precious")
    with pytest.raises(FileExistsError, match="not made by mm-run demo"):
        prepare_workdir(mine)
    assert (mine / "thesis.txt").read_text() == "precious"
    demo = tmp_path / "demo"
    prepare_workdir(demo)
    (demo / "eval").mkdir()
    (demo / "summary.json").write_text("{}")
    (demo / "user_file.txt").write_text("kept")
    prepare_workdir(demo)  # a rerun clears the demo's own outputs only
    assert (demo / MARKER).is_file() and not (demo / "eval").exists() and not (demo / "summary.json").exists()
    assert (demo / "user_file.txt").read_text() == "kept"


def test_score_is_exact_match_per_kind():
    recs = [{"prompt": "q", "images": ["a.png"], "kind": "shape", "expected": "circle", "answer": " Circle."},
            {"prompt": "q", "images": ["a.png"], "kind": "shape", "expected": "circle", "answer": "a circle"},
            {"prompt": "q", "images": ["a.png"], "kind": "colour", "expected": "red", "answer": "red"}]
    acc = score(recs)
    assert (acc.correct, acc.total) == (2, 3) and acc.per_kind["shape"] == 0.5 and acc.per_kind["colour"] == 1.0
    assert normalise(" Left!\n") == "left"
    with pytest.raises(ValueError):
        score([{"prompt": "q", "answer": "x"}])


def test_metrics_and_throughput(tmp_path):
    path = tmp_path / "m.jsonl"
    header = {"record": "run_header", "run_id": "abc", "config_hash": "0", "world_size": 1,
              "start_time": "2026-01-01T00:00:00+00:00", "start_step": 0, "resumed_from": None}
    rows = [{"step": i, "loss": 1.0 / i, "real_tokens_per_s": 100.0 * i, "loss_tokens_per_s": 10.0 * i,
             "samples_per_s": 1.0, "step_time_s": 0.5} for i in range(1, 9)]
    # a header starts the run; a duplicated line is harmless
    path.write_text("".join(json.dumps(r) + "\n" for r in [header, *rows, rows[-1]]))
    metrics = read_metrics(path)
    assert [r["step"] for r in metrics] == list(range(1, 9))
    speed = throughput(metrics)
    assert (speed["real_tokens_per_s"], speed["loss_tokens_per_s"]) == (600.0, 60.0)  # median of steps 4..8


def test_settings_are_checked():
    from mm_core.cli.demo import add_arguments, settings_from_args
    from mm_core.errors import ConfigError

    p = argparse.ArgumentParser()
    add_arguments(p)
    assert settings_from_args(p.parse_args([])) == DemoSettings(workdir=DemoSettings().workdir)
    for bad in (["--steps", "0"], ["--image-size", "100"], ["--train-images", "2", "--batch-size", "64"]):
        with pytest.raises(ConfigError):
            settings_from_args(p.parse_args(bad))


def test_examples_config_is_the_one_the_demo_writes():
    """examples/demo/finetune_tiny.yaml documents the demo's training; it must not drift."""
    s = DemoSettings()
    ours = finetune_config(s, DemoPaths(Path("mm-demo").resolve()))
    assert yaml.safe_load((REPO / "examples/demo/finetune_tiny.yaml").read_text()) == ours
    from mm_core.engine.config import parse_finetune_config

    parse_finetune_config(["--config", str(REPO / "examples/demo/finetune_tiny.yaml")])  # valid for the engine


def test_hf_check_refuses_answers_without_token_ids(tmp_path, capsys):
    from mm_core.demo.hf_check import main

    answers = tmp_path / "a.jsonl"
    answers.write_text(json.dumps({"prompt": "q", "answer": "x"}) + "\n")
    assert main(["--model", str(tmp_path), "--answers", str(answers)]) == 2
    assert "token_ids" in capsys.readouterr().err


def test_cli_rejects_bad_settings_before_doing_anything(tmp_path, capsys):
    from mm_core.cli.main import main

    assert main(["demo", "--workdir", str(tmp_path / "w"), "--image-size", "30"]) == 2
    assert "multiple of 28" in capsys.readouterr().err and not (tmp_path / "w").exists()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__]))


def _registry_with(spec):
    from mm_core.hookspecs import hookimpl
    from mm_core.plugins import PluginManager

    class Plugin:
        @hookimpl
        def mm_register_models(self, register):
            register(spec)

    return PluginManager([("fake-family", Plugin())], entry_points_=False)


def test_the_model_step_asks_the_registry_for_the_family(tmp_path, monkeypatch):
    """Core imports no family: the demo's tiny model comes from the registered spec's hook."""
    from mm_core.demo import run
    from mm_core.plugins import reset_plugin_manager
    from mm_core.specs import ModelSpec

    calls = []

    def tiny_checkpoint(path, **kwargs):
        calls.append(kwargs)
        path.mkdir()
        (path / "config.json").write_text(json.dumps({"vocab_size": 7}))
        return path

    spec = ModelSpec("fake_vl", builder=lambda *a, **k: None, converter="FakeConverter",
                     tiny_checkpoint=tiny_checkpoint)
    settings = DemoSettings(workdir=tmp_path)
    settings.model.family = "fake_vl"
    runner = StepRunner(tmp_path, total=1, verbose=False)
    reset_plugin_manager(_registry_with(spec))
    try:
        assert run._make_model(runner, settings, DemoPaths(tmp_path)) is spec
        assert calls == [settings.model.save_kwargs()]
        settings.model.family = "not_installed"
        with pytest.raises(DemoStepError, match="unknown model 'not_installed'(.|\n)*Install the plugin"):
            run._make_model(runner, settings, DemoPaths(tmp_path))
    finally:
        reset_plugin_manager()

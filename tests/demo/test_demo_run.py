"""A reduced `mm-run demo` through the same code path as the full one: the real commands
(mm-convert, mm-run finetune, mm-run infer) on a tiny random model. Training must lift held-out
accuracy above chance, and transformers must give the same greedy answers as mm-run infer."""

import json

import pytest

from mm_core.demo.data import chance_accuracy

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from mm_core.cli.main import main

    workdir = tmp_path_factory.mktemp("demo") / "work"
    # 48 held-out images = every (shape, colour, place) once, so always giving one answer per
    # question scores exactly chance; colour is what a short run learns first
    argv = ["demo", "--workdir", str(workdir), "--train-images", "240", "--eval-images", "48", "--steps", "100",
            "--lr", "0.004", "--batch-size", "32", "--num-workers", "0", "--hf-check-limit", "48", "--quiet"]
    assert main(argv) == 0, (workdir / "logs").iterdir()
    return workdir, json.loads((workdir / "summary.json").read_text())


def test_training_lifts_accuracy_above_chance(demo):
    _, s = demo
    before, after = s["accuracy_before"]["accuracy"], s["accuracy_after"]["accuracy"]
    assert after > chance_accuracy() + 0.05, s["accuracy_after"]
    assert s["accuracy_after"]["per_kind"]["colour"] >= 0.5, s["accuracy_after"]
    assert after > before
    assert s["final_loss"] < 2.0  # ln(vocabulary) = 11.9 at the start


def test_transformers_reload_gives_the_same_answers(demo):
    _, s = demo
    assert s["hf_check"]["questions"] == 48 and s["hf_check"]["equal"] == 48


def test_the_real_commands_ran_and_the_files_exist(demo):
    workdir, s = demo
    cmds = "\n".join(s["commands"])
    for expected in ("mm-convert Qwen2_5_VLConverter hf_to_mm", "mm-run infer --model mm_init --processor hf_init",
                     "mm-run finetune --config finetune.yaml", "mm-convert Qwen2_5_VLConverter dcp_to_hf",
                     "mm-run infer --model hf_trained", "python -m mm_core.demo.hf_check"):
        assert expected in cmds
    assert (workdir / "demo.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (workdir / "hf_trained" / "config.json").is_file() and (workdir / "mm_init").is_dir()
    assert s["throughput"]["real_tokens_per_s"] > s["throughput"]["loss_tokens_per_s"] > 0 and s["steps"] == 100

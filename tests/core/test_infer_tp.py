"""`mm-run infer` at tensor parallel 2 answers like one process, token for token (greedy, KV cache).

Tiny GLM-4.1V (tied head; HF dir, streamed through GlmConverter per rank, and an mm dir split at
tp 2, read rank file by rank file) and tiny Qwen2.5-VL (its own output layer; HF dir), each with an
image, a video and a text row in one left-padded batch. The one-process answers come from this process; the tp runs share ONE launch of
2 processes (``infer_tp_worker.py``). A tp size the model's heads do not allow is refused before
anything is launched or loaded.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mm_core.cli.infer_thinking import display_text
from mm_core.cli.main import main
from mm_core.testing.media import write_video

pytestmark = pytest.mark.distributed

TP = 2
NEW_TOKENS = 6


@pytest.fixture(scope="module")
def dirs(tmp_path_factory) -> dict[str, Path]:
    """The models (HF dirs with their processors, and GLM's mm dir at tp 2) and a batch file."""
    from PIL import Image

    from mm_convert.cli import main as convert
    from mm_glm.tiny import save_tiny_model as save_glm
    from mm_qwen.tiny import save_tiny_model as save_qwen

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("infer_tp")
    glm = save_glm(root / "glm_hf", with_processor=True, hidden=64, tied=True, seed=3, std=0.2)
    qwen = save_qwen(root / "qwen_hf", tied=False, with_processor=True, seed=3, std=0.2)
    glm_mm = root / "glm_mm_tp2"
    assert convert(["GlmConverter", "hf_to_mm", "--cfg.hf_config.hf_dir", str(glm), "--cfg.mm_dir", str(glm_mm),
                    "--cfg.parallel_config.tp_size", str(TP)]) in (0, None)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (60, 90, 3), dtype=np.uint8)).save(root / "a.png")
    write_video(root / "v.mp4", frames=8, fps=4)
    records = [{"prompt": "Describe this image.", "image": "a.png"}, {"prompt": "What happens?", "video": "v.mp4"},
               {"prompt": "Say hello."}]
    (root / "batch.jsonl").write_text("\n".join(json.dumps(r) for r in records))
    return {"root": root, "glm": glm, "qwen": qwen, "glm_mm": glm_mm}


def _runs(dirs: dict[str, Path], suffix: str) -> dict[str, list[str]]:
    root = dirs["root"]
    common = ["--input", str(root / "batch.jsonl"), "--max-new-tokens", str(NEW_TOKENS)]
    return {"glm": ["--model", str(dirs["glm"]), *common, "--output", str(root / f"glm_{suffix}.jsonl")],
            "qwen": ["--model", str(dirs["qwen"]), *common, "--output", str(root / f"qwen_{suffix}.jsonl")],
            "glm_mm": ["--model", str(dirs["glm_mm"]), "--processor", str(dirs["glm"]), *common,
                       "--output", str(root / f"glm_mm_{suffix}.jsonl")]}


@pytest.fixture(scope="module")
def answers(dirs) -> dict[str, dict[str, list[list[int]]]]:
    """``{"one"|"tp": {run: token ids per row}}`` and the launch's stderr under ``"log"``."""
    root = dirs["root"]
    for name, argv in _runs(dirs, "one").items():
        if name != "glm_mm":  # an mm dir split at tp 2 loads only at tp 2
            assert main(["infer", *argv]) == 0, name
    job = root / "job.json"
    job.write_text(json.dumps({"runs": _runs(dirs, "tp"), "out": str(root)}))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(TP),
           str(Path(__file__).with_name("infer_tp_worker.py")), str(job)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, f"the {TP}-process launch failed:\n{proc.stderr[-4000:]}"

    def tokens(file: Path) -> list[list[int]]:
        return [json.loads(line)["token_ids"] for line in file.read_text().splitlines()]

    out: dict = {"log": proc.stderr, "stdout": proc.stdout, "one": {}, "tp": {}}
    for name in ("glm", "qwen", "glm_mm"):
        assert (root / f"{name}.rc").read_text() == "0", name
        out["tp"][name] = tokens(root / f"{name}_tp.jsonl")
        if name != "glm_mm":
            out["one"][name] = tokens(root / f"{name}_one.jsonl")
    return out


@pytest.mark.parametrize("name", ["glm", "qwen"])
def test_tp2_greedy_tokens_equal_one_process(answers, name):
    one, tp = answers["one"][name], answers["tp"][name]
    assert tp == one
    assert len(one) == 3 and all(len(r) == NEW_TOKENS for r in one) and len({tuple(r) for r in one}) == 3


def test_glm_mm_dir_split_at_tp2_answers_like_the_hf_dir_in_one_process(answers):
    assert answers["tp"]["glm_mm"] == answers["one"]["glm"]


def test_each_rank_loads_only_its_shard_and_only_rank0_answers(answers, dirs):
    held = re.findall(r"loaded (\S+) in [\d.]+s \(tp 2: rank 0 holds ([\d.]+)M of the model's ([\d.]+)M", answers["log"])
    assert {Path(d).name for d, _, _ in held} == {"glm_hf", "qwen_hf", "glm_mm_tp2"}
    for _, local, total in held:  # the embedding, head, attention and MLPs split: about half each
        assert float(local) < 0.6 * float(total)
    assert answers["log"].count("generated 18 tokens") == 3  # rank 0 only (3 rows x 6 tokens, one line per run)
    shown = [display_text(json.loads(line)["answer"]) for name in ("glm", "qwen", "glm_mm")
             for line in (dirs["root"] / f"{name}_tp.jsonl").read_text().splitlines()]
    assert answers["stdout"] == "".join(f"{text}\n" for text in shown)  # printed once, by rank 0


def test_a_tp_the_kv_heads_do_not_allow_is_refused_before_launch(dirs, monkeypatch, capsys):
    import mm_core.cli.infer

    def no_launch(*_a, **_k):
        raise AssertionError("launched")

    monkeypatch.setattr(mm_core.cli.infer, "launch_workers", no_launch)
    argv = ["infer", "--model", str(dirs["glm"]), "--prompt", "hi"]
    assert main([*argv, "--nproc-per-node", "4"]) == 2
    err = capsys.readouterr().err
    assert "--tp 4" in err and "text_config.num_key_value_heads 2" in err and "Traceback" not in err
    assert main([*argv, "--nproc-per-node", "4", "--tp", "2"]) == 2
    assert "--tp 2: must equal the number of processes (4)" in capsys.readouterr().err


def test_tp_alone_starts_that_many_workers_with_the_same_arguments(dirs, monkeypatch):
    import mm_core.cli.infer

    seen = {}

    def fake_launch(module, rest, launch):
        seen.update(module=module, rest=list(rest), nproc=launch.nproc)
        return 0

    monkeypatch.setattr(mm_core.cli.infer, "launch_workers", fake_launch)
    argv = ["--model", str(dirs["glm"]), "--prompt", "hi", "--tp", "2"]
    assert main(["infer", *argv]) == 0
    assert seen == {"module": "mm_core.cli.infer", "rest": argv, "nproc": 2}
    assert main(["infer", "--nproc-per-node", "2", *argv[:-2]]) == 0
    assert seen["rest"] == argv[:-2] and seen["nproc"] == 2


def test_an_mm_dir_runs_at_the_tp_it_was_split_for(dirs, monkeypatch, capsys):
    import mm_core.cli.infer
    from mm_convert.cli import main as convert

    monkeypatch.setattr(mm_core.cli.infer, "launch_workers", lambda *_a, **_k: pytest.fail("launched"))
    ask = ["--processor", str(dirs["glm"]), "--prompt", "hi"]
    assert main(["infer", "--model", str(dirs["glm_mm"]), *ask]) == 2  # one process, a tp 2 split
    err = capsys.readouterr().err
    assert "split for tp 2, asked to run at tp 1: run it with --nproc-per-node 2" in err and "Traceback" not in err
    tp1 = dirs["root"] / "glm_mm_tp1"
    assert convert(["GlmConverter", "hf_to_mm", "--cfg.hf_config.hf_dir", str(dirs["glm"]), "--cfg.mm_dir", str(tp1),
                    "--cfg.parallel_config.tp_size", "1"]) in (0, None)
    assert main(["infer", "--model", str(tp1), *ask, "--nproc-per-node", "2"]) == 2  # refused before launch
    err = capsys.readouterr().err
    assert "split for tp 1, asked to run at tp 2" in err and "GlmConverter resplit" in err

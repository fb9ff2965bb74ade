"""`mm-run infer --lora`: the base with its adapters answers exactly like the merged model, and
adapters are refused on a base they were not trained on (unless --no-check-base)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from mm_core.cli.main import main

_spec = importlib.util.spec_from_file_location("lora_helpers", Path(__file__).with_name("_lora_helpers.py"))
lh = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(lh)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from PIL import Image

    from mm_core.family.hf_config import load_hf_config
    from mm_qwen.tiny import make_inputs, save_tiny_model

    tmp = tmp_path_factory.mktemp("infer_lora")
    hf_dir = save_tiny_model(tmp / "hf", vision_depth=2, text_layers=2, with_processor=True, seed=3, std=0.2)
    batch = make_inputs(load_hf_config(hf_dir), [[("text", 4), ("image", (1, 8, 12)), ("text", 5)]], seed=2)
    lh.make_adapters(hf_dir, tmp / "adapters", batch, seed=7)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (60, 90, 3), dtype=np.uint8)).save(tmp / "a.png")
    return tmp, hf_dir


def _answer(tmp: Path, name: str, *extra: str, image: Path | None = None) -> tuple[int, list[list[int]]]:
    out = tmp / f"{name}.jsonl"
    rc = main(["infer", *extra, "--image", str(image or tmp / "a.png"), "--prompt", "Describe this image.",
               "--max-new-tokens", "8", "--output", str(out)])
    rows = [json.loads(line)["token_ids"] for line in out.read_text().splitlines()] if out.is_file() else []
    return rc, rows


def test_lora_answers_like_the_merged_model(setup):
    tmp, hf_dir = setup
    merged = tmp / "merged"
    assert main(["lora", "merge", "--base", str(hf_dir), "--adapters", str(tmp / "adapters"), "--out", str(merged)]) == 0
    rc, with_lora = _answer(tmp, "lora", "--model", str(hf_dir), "--lora", str(tmp / "adapters"))
    assert rc == 0
    assert _answer(tmp, "merged", "--model", str(merged), "--processor", str(hf_dir))[1] == with_lora
    assert _answer(tmp, "base", "--model", str(hf_dir))[1] != with_lora  # the adapters change the answer


def test_lora_on_another_base_is_refused(setup, tmp_path, capsys):
    from mm_qwen.tiny import save_tiny_model

    tmp, _ = setup
    other = save_tiny_model(tmp_path / "other", vision_depth=2, text_layers=2, with_processor=True, seed=9, std=0.2)
    capsys.readouterr()
    rc, rows = _answer(tmp_path, "x", "--model", str(other), "--lora", str(tmp / "adapters"), image=tmp / "a.png")
    err = capsys.readouterr().err
    assert rc != 0 and not rows and "trained on base" in err and "--no-check-base" in err, err
    rc, rows = _answer(tmp_path, "y", "--model", str(other), "--lora", str(tmp / "adapters"), "--no-check-base",
                       image=tmp / "a.png")
    assert rc == 0 and rows

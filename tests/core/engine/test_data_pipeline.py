"""The engine on the real data pipeline (mm_core.data): mllm records with images, per_token_loss,
and exact resume of the loader position from a checkpoint, also of a dp=2 checkpoint in one
process. A tiny formatter for the engine's toy model is registered in process (and, for the
two-process run, by this file's ``__main__`` in each worker), so no tokenizer or processor is
needed."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mm_core.batch import IGNORE_INDEX
from mm_core.hookspecs import hookimpl
from mm_core.plugins import PluginManager, get_plugin_manager, reset_plugin_manager
from mm_core.specs import FormatterSpec

_spec = importlib.util.spec_from_file_location("engine_helpers", Path(__file__).with_name("_helpers.py"))
helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(helpers)

PATCH = 16  # pixels per vision token side
IMAGE_TOKEN, PATCH_DIM, VOCAB = 3, 12, 64


class ToyVLFormatter:
    """Text characters as tokens; an image becomes (h/16)*(w/16) image tokens and patch rows."""

    pad_token_id = 0

    def __init__(self, config):
        self.config = config

    def fingerprint(self) -> str:
        return "engine-toy-vl-1"

    def encode(self, sample, *, pixels: bool = True):
        grids, rows = [], []
        for path in sample.images:
            with Image.open(path) as im:
                w, h = im.size
                value = float(np.asarray(im.convert("L"), dtype=np.float32).mean()) / 255.0
            grids.append([1, h // PATCH, w // PATCH])
            rows.append(torch.full(((h // PATCH) * (w // PATCH), PATCH_DIM), value))
        ids, labels, images = [1], [IGNORE_INDEX], iter(grids)
        for m in sample.messages:
            for k, text in enumerate(m["content"].split("<image>")):
                if k:
                    _, gh, gw = next(images)
                    ids += [IMAGE_TOKEN] * (gh * gw)
                    labels += [IGNORE_INDEX] * (gh * gw)
                toks = [4 + ord(c) % (VOCAB - 4) for c in text]
                ids += toks
                labels += toks if m["role"] == "assistant" else [IGNORE_INDEX] * len(toks)
        out = {"input_ids": ids, "labels": labels}
        if pixels and grids:
            out["pixel_values"] = torch.cat(rows)
            out["image_grid_thw"] = torch.tensor(grids)
        return out

    def dummy_vision(self):
        return {"pixel_values": torch.zeros(1, PATCH_DIM), "image_grid_thw": torch.tensor([[1, 1, 1]])}


@hookimpl
def mm_register_formatters(register):
    register(FormatterSpec("engine_toy_vl", ToyVLFormatter))


def _register_toy_formatter() -> None:
    plugin = types.SimpleNamespace(mm_register_formatters=mm_register_formatters)
    reset_plugin_manager(PluginManager(plugins=[("engine-test", plugin)], entry_points_=False))


@pytest.fixture
def toy_formatter():
    before = get_plugin_manager()
    _register_toy_formatter()
    yield
    reset_plugin_manager(before)


def _dataset(root: Path) -> Path:
    (root / "img").mkdir(parents=True)
    rng = np.random.default_rng(0)
    with open(root / "train.jsonl", "w") as f:
        for i in range(24):
            answer = ("red" if i % 2 else "blue") + " " * int(rng.integers(0, 6)) + str(i)
            rec = {"messages": [{"role": "user", "content": f"which colour {i}?"},
                                {"role": "assistant", "content": answer}]}
            if i % 3:
                w, h = PATCH * int(rng.integers(1, 4)), PATCH * int(rng.integers(1, 3))
                Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(root / "img" / f"{i}.png")
                rec = {"images": [f"img/{i}.png"], "messages": [{"role": "user", "content": "<image>which colour?"},
                                                                 rec["messages"][1]]}
            f.write(json.dumps(rec) + "\n")
    return root


def _config(tmp_path: Path) -> dict:
    data = _dataset(tmp_path / "data")
    cfg = helpers.base_config("toy", **{
        "data.source": "mllm", "training.seq_length": 64, "training.micro_batch_size": 2, "training.train_iters": 4,
        "output.save": str(tmp_path / "ckpt"), "output.save_interval": 2})
    cfg["data"] = {"source": "mllm", "config": {"basic_parameters": {
        "template": "engine_toy_vl", "dataset_dir": str(data), "dataset": "train.jsonl",
        "cache_dir": str(tmp_path / "cache")}}}
    return cfg


def test_pipeline_data_trains_and_resumes_exactly(tmp_path, toy_formatter):
    cfg = _config(tmp_path)
    full, _ = helpers.run_inprocess(tmp_path, "full", {**cfg, "output": {**cfg["output"], "save": str(tmp_path / "a")}})
    assert len(full) == 4 and all(r["loss_tokens"] > 0 for r in full)
    _, _ = helpers.run_inprocess(tmp_path, "first", {**cfg, "training": {**cfg["training"], "train_iters": 2},
                                                     "output": {**cfg["output"], "save": str(tmp_path / "b")}})
    resumed, _ = helpers.run_inprocess(tmp_path, "second", {**cfg, "output": {**cfg["output"],
                                                                           "load": str(tmp_path / "b")}})
    assert [r["step"] for r in resumed] == [3, 4]
    assert [r["loss"] for r in resumed] == [r["loss"] for r in full[2:]]


def test_dp2_checkpoint_on_real_data_resumes_in_one_process(tmp_path, toy_formatter):
    """Saved by two data ranks (grad_accum 1), resumed by one (grad_accum 2): the same samples next."""
    cfg = _config(tmp_path)
    full, _ = helpers.run_inprocess(tmp_path, "full", {**cfg, "output": {**cfg["output"], "save": str(tmp_path / "a")}})
    first = {**cfg, "training": {**cfg["training"], "train_iters": 2},
             "output": {**cfg["output"], "save": str(tmp_path / "b")}}
    cfg_file = helpers.write_config(tmp_path / "dp2.yaml", first)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           __file__, str(tmp_path / "dp2"), "--config", str(cfg_file)],
                          capture_output=True, text=True, timeout=240, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    dp2 = helpers.read_records(tmp_path / "dp2")
    assert [r["loss_tokens"] for r in dp2] == [r["loss_tokens"] for r in full[:2]]
    resumed, _ = helpers.run_inprocess(tmp_path, "resumed", {**cfg, "output": {
        **cfg["output"], "save": str(tmp_path / "c"), "load": str(tmp_path / "b")}})
    assert [r["step"] for r in resumed] == [3, 4]
    assert [r["loss_tokens"] for r in resumed] == [r["loss_tokens"] for r in full[2:]]  # the same samples
    assert [r["loss"] for r in resumed] == pytest.approx([r["loss"] for r in full[2:]], rel=1e-4)


if __name__ == "__main__":  # a torchrun worker of the dp=2 run: OUT_DIR <finetune args>
    _register_toy_formatter()
    helpers.worker.run(sys.argv[2:], sys.argv[1])


@pytest.mark.parametrize("mode", ["fill", "fixed"])
def test_packing_says_how_many_samples_a_step_holds(tmp_path, toy_formatter, capsys, mode):
    cfg = _config(tmp_path)
    cfg["data"]["config"]["basic_parameters"] |= {"packing": True, "packing_samples": mode}
    records, _ = helpers.run_inprocess(tmp_path, mode, cfg)
    header = json.loads((tmp_path / "ckpt" / "metrics.jsonl").read_text().splitlines()[0])["samples_per_step"]
    note = [x for x in capsys.readouterr().out.splitlines() if x.startswith("packing:")]
    samples = [r["samples"] for r in records]
    if mode == "fixed":  # global_batch_size 4 counts samples, as without packing
        assert samples == [4] * 4 and header == {"packing_samples": "fixed", "samples_per_step": 4}
        assert note and "4 samples per optimizer step as without packing" in note[0]
    else:  # 4 rows of 64 tokens a step hold more samples than 4, and the run says so up front
        assert header["rows_per_step"] == 4 and header["samples_per_step_mean"] > 4
        assert all(header["samples_per_step_min"] <= s <= header["samples_per_step_max"] for s in samples)
        assert min(samples) > 4, samples
        assert note and "packing_samples fixed" in note[0] and f"{header['samples_per_step_mean']:g} samples" in note[0]


def test_fixed_packing_is_refused_with_pipeline_stages(tmp_path, toy_formatter):
    from mm_core.engine.config import parse_finetune_config, validate
    from mm_core.errors import ConfigError

    cfg = _config(tmp_path)
    cfg["data"]["config"]["basic_parameters"] |= {"packing": True, "packing_samples": "fixed"}
    parsed = parse_finetune_config(["--config", str(helpers.write_config(tmp_path / "c.yaml", cfg)),
                                    "--parallel.pp", "2"])
    with pytest.raises(ConfigError, match=r"packing_samples fixed .*\(parallel.pp = 2\)"):
        validate(parsed, 2)

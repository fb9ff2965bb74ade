"""The synthetic source's packing (``data.synthetic_packing``): the same samples per step as padding,
packed into rows of ``training.seq_length``, and the same loss and gradients as the padded rows."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from mm_core.engine.config import parse_finetune_config, validate
from mm_core.engine.data import SyntheticData
from mm_core.errors import ConfigError

_spec = importlib.util.spec_from_file_location("engine_helpers", Path(__file__).with_name("_helpers.py"))
helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(helpers)


def _config(tmp: Path, name: str, **overrides):
    cfg = helpers.base_config(**{"training.micro_batch_size": 4, "training.global_batch_size": 4,
                                 "training.seq_length": 64, **overrides})
    return parse_finetune_config(["--config", str(helpers.write_config(tmp / f"{name}.yaml", cfg))]), cfg


def _window(tmp: Path, name: str, **overrides):
    cfg, raw = _config(tmp, name, **overrides)
    hf = raw["model"]["hf_config"]
    return SyntheticData(cfg, validate(cfg, 1, hf), 0, hf).next_window()


def _samples(batch) -> list[tuple[list[int], list[int]]]:
    """(input ids, labels) of every sample of a micro-batch, in row order."""
    out = []
    for ids, labels, seg in zip(batch["input_ids"], batch["labels"], batch["segment_ids"], strict=True):
        for s in range(int(seg.max()) + 1):
            at = seg == s
            out.append((ids[at].tolist(), labels[at].tolist()))
    return out


def test_packed_rows_hold_the_padded_samples(tmp_path):
    (padded,) = _window(tmp_path, "padded")
    (packed,) = _window(tmp_path, "packed", **{"data.synthetic_packing": True})
    assert padded["input_ids"].shape[0] == 4 and packed["input_ids"].shape[0] < 4  # samples share rows
    assert packed["input_ids"].shape[1] <= 64 and int(packed["num_samples"]) == 4
    assert (packed["segment_ids"] >= 0).sum() == (padded["segment_ids"] >= 0).sum()
    assert sorted(_samples(packed)) == sorted(_samples(padded))
    assert int(packed["segment_ids"].max()) >= 1  # several samples in one row, numbered from 0
    # the images follow the tokens: a row-major walk meets the image tokens in pixel_values' order
    image = helpers.model_section("qwen")["hf_config"]["image_token_id"]
    merge = 4  # spatial_merge_size ** 2 patches per image token
    assert int((packed["input_ids"] == image).sum()) * merge == packed["pixel_values"].shape[0]
    order = [tuple(s[0]) for s in _samples(packed)]
    pixels_of = {tuple(ids): i for i, (ids, _) in enumerate(_samples(padded))}
    starts = torch.cat([torch.zeros(1, dtype=torch.long),
                        ((padded["input_ids"] == image).sum(1) * merge).cumsum(0)])
    want = torch.cat([padded["pixel_values"][starts[pixels_of[o]]:starts[pixels_of[o] + 1]] for o in order])
    assert torch.equal(packed["pixel_values"], want)


def test_packed_and_padded_train_to_the_same_loss(tmp_path):
    steps = {"training.train_iters": 2}
    padded, _ = helpers.run_inprocess(tmp_path, "padded", helpers.base_config(
        **{"training.micro_batch_size": 4, "training.seq_length": 64, **steps}))
    packed, _ = helpers.run_inprocess(tmp_path, "packed", helpers.base_config(
        **{"training.micro_batch_size": 4, "training.seq_length": 64, "data.synthetic_packing": True, **steps}))
    assert [r["loss"] for r in packed] == pytest.approx([r["loss"] for r in padded], rel=1e-5)
    assert [r["grad_norm"] for r in packed] == pytest.approx([r["grad_norm"] for r in padded], rel=1e-4)
    assert [r["real_tokens"] for r in packed] == [r["real_tokens"] for r in padded]
    assert all(r["samples"] == 4 for r in packed)


def test_a_sample_longer_than_a_row_names_the_fields(tmp_path):
    with pytest.raises(ConfigError, match="training.seq_length 16.*data.synthetic_max_len"):
        _window(tmp_path, "long", **{"data.synthetic_packing": True, "training.seq_length": 16})


def test_lognormal_lengths_stay_in_range_and_are_mostly_short(tmp_path):
    cfg, raw = _config(tmp_path, "mix", **{"data.synthetic_lengths": "lognormal", "data.synthetic_min_len": 64,
                                           "data.synthetic_max_len": 2048, "data.synthetic_image_tokens": 0,
                                           "data.synthetic_samples": 400})
    hf = raw["model"]["hf_config"]
    data = SyntheticData(cfg, validate(cfg, 1, hf), 0, hf)
    lengths = torch.tensor([data.sample(i)["input_ids"].numel() for i in range(400)], dtype=torch.float)
    assert 64 <= lengths.min() and lengths.max() <= 2048
    assert 250 < lengths.median() < 520  # the geometric mean of the range is 362
    assert lengths.mean() > lengths.median()  # a long tail

"""Fixtures for the data-pipeline tests: generated images/videos/records and a toy formatter.

The toy formatter (characters as tokens, one vision token per 16x16 pixels) keeps loader tests
fast and independent of any family; the Qwen formatter has its own tests in tests/qwen.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mm_core.batch import IGNORE_INDEX
from mm_core.data.config import DataConfig
from mm_core.data.media import image_size, load_image
from mm_core.testing.media import write_video

VISION_ID = 3


class ToyFormatter:
    """Characters -> ids; each image -> (h//16)*(w//16) vision tokens and as many 4-value 'patches'."""

    pad_token_id = 0
    image_token_id = VISION_ID

    def __init__(self, config: DataConfig):
        self.config = config
        self.calls = 0

    def fingerprint(self) -> str:
        return f"toy-{self.config.basic_parameters.train_on_prompt}"

    def encode(self, sample, *, pixels: bool = True):
        self.calls += 1
        ids, labels = [1], [IGNORE_INDEX]
        grids, patches = [], []
        for path in sample.images:
            if pixels:
                im = np.asarray(load_image(path, sample.where), dtype=np.float32)
                h, w = im.shape[:2]
                n = (h // 16) * (w // 16)
                patches.append(torch.full((n, 4), float(im.mean())))
            else:
                h, w = image_size(path, sample.where)
                n = (h // 16) * (w // 16)
            grids.append([1, h // 16, w // 16])
        g = iter(grids)
        for m in sample.messages:
            for piece_i, piece in enumerate(m["content"].split("<image>")):
                if piece_i:
                    n = int(np.prod(next(g)))
                    ids += [VISION_ID] * n
                    labels += [IGNORE_INDEX] * n
                toks = [4 + ord(c) % 200 for c in piece]
                ids += toks
                labels += toks if m["role"] == "assistant" else [IGNORE_INDEX] * len(toks)
            ids.append(2)
            labels.append(2 if m["role"] == "assistant" else IGNORE_INDEX)
        out = {"input_ids": ids, "labels": labels}
        if pixels and sample.images:
            out["pixel_values"] = torch.cat(patches)
            out["image_grid_thw"] = torch.tensor(grids)
        return out

    def dummy_vision(self):
        return {"pixel_values": torch.zeros(4, 4), "image_grid_thw": torch.tensor([[1, 2, 2]])}


def make_image(path: Path, w: int = 64, h: int = 48, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)
    return path


def make_video(path: Path, n: int = 17, fps: int = 8, w: int = 64, h: int = 48) -> Path:
    return write_video(path, n, fps, w, h)


def make_records(tmp: Path, n: int, *, seed: int = 0) -> list[dict]:
    """``n`` records of varied length; every third has an image, the rest are text-only."""
    rng = np.random.default_rng(seed)
    (tmp / "img").mkdir(exist_ok=True)
    recs = []
    for i in range(n):
        q = "q" * int(rng.integers(3, 40))
        a = "a" * int(rng.integers(3, 60))
        if i % 3 == 0:
            make_image(tmp / "img" / f"{i}.png", w=16 * int(rng.integers(1, 4)), h=16 * int(rng.integers(1, 3)), seed=i)
            recs.append({"images": [f"img/{i}.png"],
                         "messages": [{"role": "user", "content": f"<image>{q}{i}"}, {"role": "assistant", "content": a}]})
        else:
            recs.append({"messages": [{"role": "user", "content": f"{q}{i}"}, {"role": "assistant", "content": a}]})
    return recs


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def data_config(tmp: Path, dataset: str, **basic) -> DataConfig:
    cfg = DataConfig()
    cfg.basic_parameters.dataset_dir = str(tmp)
    cfg.basic_parameters.dataset = dataset
    for k, v in basic.items():
        setattr(cfg.basic_parameters, k, v)
    return cfg


def jsonl_config(tmp: Path, n: int = 40, **basic) -> DataConfig:
    """A data config over ``n`` generated records written to ``tmp/d.jsonl``."""
    write_jsonl(tmp / "d.jsonl", make_records(tmp, n))
    return data_config(tmp, "d.jsonl", **basic)


def assert_same_batches(a: list, b: list) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for key in x:
            assert torch.equal(x[key], y[key]), key


@pytest.fixture
def toy():
    return ToyFormatter


@pytest.fixture
def h():
    """The helpers above, as a fixture (tests are imported in importlib mode)."""
    from types import SimpleNamespace

    return SimpleNamespace(make_image=make_image, make_video=make_video, make_records=make_records,
                           write_jsonl=write_jsonl, data_config=data_config, Toy=ToyFormatter,
                           jsonl_config=jsonl_config, same=assert_same_batches)

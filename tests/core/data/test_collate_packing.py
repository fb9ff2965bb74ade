"""Padding to a multiple of 8, packing whole samples, segment ids, dummy vision."""

import random

import torch

from mm_core.batch import IGNORE_INDEX
from mm_core.data.collate import collate
from mm_core.data.packing import pack_rows, packing_efficiency


def _sample(n, start, img=False):
    ids = list(range(start, start + n))
    out = {"input_ids": ids, "labels": [IGNORE_INDEX] * (n // 2) + ids[n // 2:]}
    if img:
        out["pixel_values"] = torch.full((4, 3), float(start))
        out["image_grid_thw"] = torch.tensor([[1, 2, 2]])
    return out


def test_pack_rows_keeps_samples_whole_and_fits():
    rng = random.Random(0)
    lengths = [rng.randint(1, 100) for _ in range(500)]
    rows = pack_rows(lengths, 128)
    flat = sorted(i for r in rows for i in r)
    assert flat == list(range(500))  # every sample exactly once
    assert all(sum(lengths[i] for i in r) <= 128 for r in rows)
    assert all(r == sorted(r) for r in rows)
    assert packing_efficiency(rows, lengths, 128) > 0.95


def test_pad_multiple_of_8_labels_and_masks():
    samples = [_sample(5, 10), _sample(11, 100)]
    b = collate(samples, pad_token_id=0)
    assert b["input_ids"].shape == (2, 16)
    assert b["labels"][0, 0] == IGNORE_INDEX and b["labels"][1, 0] == IGNORE_INDEX
    assert b["attention_mask"].sum().item() == 16
    assert (b["segment_ids"][0, :5] == 0).all() and (b["segment_ids"][0, 5:] == -1).all()
    assert (b["input_ids"][0, 5:] == 0).all() and (b["labels"][0, 5:] == IGNORE_INDEX).all()
    assert b["dummy_vision"].item() is False and "pixel_values" not in b  # no dummy given: no vision keys


def test_packed_equals_unpacked_tokens_and_labels():
    rng = random.Random(1)
    samples = [_sample(rng.randint(2, 30), 1000 * i, img=i % 2 == 0) for i in range(12)]
    for s in samples:
        s["labels"][0] = 5  # collate must force the first label of each sample to -100
    rows = pack_rows([len(s["input_ids"]) for s in samples], 64)
    packed = collate(samples, rows, pad_token_id=0)
    unpacked = collate(samples, pad_token_id=0)
    seen = []
    for b, row in enumerate(rows):
        seg = packed["segment_ids"][b]
        for k, i in enumerate(row):
            m = seg == k
            ref = unpacked["segment_ids"][i] == 0
            assert torch.equal(packed["input_ids"][b][m], unpacked["input_ids"][i][ref])
            assert torch.equal(packed["labels"][b][m], unpacked["labels"][i][ref])
            assert packed["labels"][b][m][0] == IGNORE_INDEX
            pos = m.nonzero().flatten()
            assert (pos[1:] - pos[:-1] == 1).all()  # contiguous: no sample split
            seen.append(i)
    assert sorted(seen) == list(range(12))
    assert packed["num_samples"].item() == 12 == unpacked["num_samples"].item()
    # images follow row order in both layouts
    order = [i for r in rows for i in r]
    expect = torch.cat([samples[i]["pixel_values"] for i in order if "pixel_values" in samples[i]])
    assert torch.equal(packed["pixel_values"], expect)
    assert packed["image_grid_thw"].shape == (6, 3)


def test_dummy_vision_for_text_only_batch():
    dummy = {"pixel_values": torch.zeros(4, 3), "image_grid_thw": torch.tensor([[1, 2, 2]])}
    b = collate([_sample(4, 1)], pad_token_id=0, dummy_vision=dummy)
    assert b["dummy_vision"].item() is True and torch.equal(b["pixel_values"], dummy["pixel_values"])
    b = collate([_sample(4, 1, img=True)], pad_token_id=0, dummy_vision=dummy)
    assert b["dummy_vision"].item() is False and b["pixel_values"][0, 0] == 1.0

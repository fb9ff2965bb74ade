"""Packing and the samples of an optimizer step: ``fill`` says how many a step holds, ``fixed`` keeps
``micro_batch_size`` samples per micro-batch (the unpacked run's samples, minus the padding)."""

import copy

import pytest

from mm_core.data import build_dataloader
from mm_core.data.packing import pack_groups, samples_per_step
from mm_core.errors import ConfigError

KW = dict(seq_len=256, micro_batch_size=3, num_epochs=1)


def _samples(batch) -> list[tuple[int, ...]]:
    """Each sample of a micro-batch as its token ids (rows split at their segments)."""
    out = []
    for ids, seg in zip(batch["input_ids"], batch["segment_ids"]):
        out += [tuple(ids[seg == s].tolist()) for s in range(int(seg.max()) + 1)]
    return out


def test_pack_groups_keeps_each_group_of_samples_together():
    lengths = [50, 60, 200, 10, 30, 100, 90]
    mbs = pack_groups(range(7), lengths, 3, 256, drop_last=False)
    assert [sorted(i for row in mb for i in row) for mb in mbs] == [[0, 1, 2], [3, 4, 5], [6]]
    assert all(sum(lengths[i] for i in row) <= 256 for mb in mbs for row in mb)
    assert [len(mb) for mb in mbs] == [2, 1, 1]  # 50+60+200 needs two rows; 10+30+100 fits one
    assert pack_groups(range(7), lengths, 3, 256, drop_last=True)[-1] == [[3, 4, 5]]
    assert samples_per_step(mbs, 2) == [6, 1]


def test_fixed_gives_the_unpacked_samples_in_fewer_rows(tmp_path, h):
    cfg = h.jsonl_config(tmp_path, n=36)
    plain = list(build_dataloader(cfg, h.Toy(cfg), **KW))
    packed_cfg = copy.deepcopy(cfg)
    packed_cfg.basic_parameters.packing, packed_cfg.basic_parameters.packing_samples = True, "fixed"
    fixed = build_dataloader(packed_cfg, h.Toy(packed_cfg), **KW)
    batches = list(fixed)
    assert [_samples(b) for b in batches] == [_samples(b) for b in plain]  # same samples, same order
    assert all(int(b["num_samples"]) == 3 for b in batches)
    rows, plain_rows = sum(b["input_ids"].shape[0] for b in batches), sum(b["input_ids"].shape[0] for b in plain)
    assert rows < plain_rows  # packing took effect
    positions = sum(b["input_ids"].numel() for b in batches)
    assert positions < sum(b["input_ids"].numel() for b in plain)  # less padding computed
    assert fixed.samples_per_step() == [3] * len(batches)
    assert fixed.state_dict()["layout"]["packing"] == "fixed"  # another plan: a fill checkpoint is refused


def test_fill_reports_the_samples_its_steps_hold(tmp_path, h):
    cfg = h.jsonl_config(tmp_path, n=36, packing=True)
    kw = {**KW, "micro_batch_size": 1, "grad_accum": 2}
    loader = build_dataloader(cfg, h.Toy(cfg), **kw)
    counts = loader.samples_per_step()
    got = [int(b["num_samples"]) for b in loader]
    assert counts == [got[i] + got[i + 1] for i in range(0, len(got), 2)]
    assert min(counts) > 2  # two rows a step, more samples than rows: what the log must say


def test_streaming_fixed_keeps_micro_batch_size_samples_and_resumes(tmp_path, h):
    cfg = h.jsonl_config(tmp_path, n=30, streaming=True, packing=True, packing_samples="fixed", pack_buffer=12)
    full = list(build_dataloader(cfg, h.Toy(cfg), **KW))
    assert [int(b["num_samples"]) for b in full] == [3] * 10
    assert any(b["input_ids"].shape[0] < 3 for b in full)
    assert build_dataloader(cfg, h.Toy(cfg), **KW).samples_per_step() is None  # known only as read
    first = build_dataloader(cfg, h.Toy(cfg), **KW)
    head = [next(first) for _ in range(5)]
    resumed = build_dataloader(cfg, h.Toy(cfg), **KW)
    resumed.load_state_dict(copy.deepcopy(first.state_dict()))
    h.same(head + list(resumed), full)


def test_an_unknown_mode_names_the_field(tmp_path, h):
    cfg = h.jsonl_config(tmp_path, n=6, packing=True, packing_samples="always")
    with pytest.raises(ConfigError, match="basic_parameters.packing_samples: unknown value 'always'; valid: fill, fixed"):
        build_dataloader(cfg, h.Toy(cfg), **KW)

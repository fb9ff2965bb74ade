"""Map-style resume on another data-parallel size (same global batch), and clear refusals."""

import copy
import json

import pytest

from mm_core.data import build_dataloader
from mm_core.errors import ConfigError


def _ranks(cfg, h, dp, ga, **kw):
    return [build_dataloader(cfg, h.Toy(cfg), dp_rank=r, dp_size=dp, grad_accum=ga, **kw) for r in range(dp)]


def _steps(loaders, ga, steps):
    for _ in range(steps):
        for loader in loaders:
            for _ in range(ga):
                next(loader)


@pytest.mark.parametrize("packing,workers", [(True, 0), (False, 2)])
def test_dp2_states_resume_on_one_rank_with_doubled_accumulation(tmp_path, h, packing, workers):
    cfg = h.jsonl_config(tmp_path, packing=packing)
    cfg.dataloader_param.num_workers = workers
    kw = dict(seq_len=128, micro_batch_size=2, seed=5, num_epochs=2)
    ranks = _ranks(cfg, h, 2, 1, **kw)
    _steps(ranks, 1, 3)
    ranks[0].read_ahead(2)  # pre-read micro-batches are not part of the saved position
    states = json.loads(json.dumps([r.state_dict() for r in ranks]))  # as stored in a checkpoint
    rest = [list(r) for r in ranks]  # what the two ranks hand out next, to the end of epoch 2
    assert len(rest[0]) == len(rest[1]) > 3
    expected = [mb for pair in zip(*rest) for mb in pair]  # global order: rank 0, rank 1, rank 0, ...
    one = build_dataloader(cfg, h.Toy(cfg), dp_rank=0, dp_size=1, grad_accum=2, **kw)
    one.load_state_dict(copy.deepcopy(states))
    h.same(list(one), expected)
    # and back: the one-rank state resumes on two ranks (each continues with its share)
    one = build_dataloader(cfg, h.Toy(cfg), dp_rank=0, dp_size=1, grad_accum=2, **kw)
    one.load_state_dict(states)
    _steps([one], 2, 2)
    saved = one.state_dict()
    tail = list(one)
    for r, loader in enumerate(_ranks(cfg, h, 2, 1, **kw)):
        loader.load_state_dict(saved)  # a single state from a one-rank run is the whole story
        h.same(list(loader), tail[r::2])


def test_refusals_name_the_saved_and_new_settings(tmp_path, h):
    cfg = h.jsonl_config(tmp_path, n=24, packing=True)
    kw = dict(seq_len=128, seed=1, num_epochs=1)
    ranks = _ranks(cfg, h, 2, 1, micro_batch_size=2, **kw)
    _steps(ranks, 1, 1)
    states = [r.state_dict() for r in ranks]

    def one(**over):
        return build_dataloader(cfg, h.Toy(cfg), **{"dp_size": 1, "grad_accum": 2, "micro_batch_size": 2, **kw, **over})

    with pytest.raises(ConfigError, match="pass the states of all 2 saved data ranks"):
        one().load_state_dict(states[0])
    with pytest.raises(ConfigError, match="micro_batch_size: saved 2 vs now 1"):
        one(micro_batch_size=1, grad_accum=4).load_state_dict(states)
    with pytest.raises(ConfigError, match=r"global batch differs .*2 x 1, now 1 x 1"):
        one(grad_accum=1).load_state_dict(states)
    with pytest.raises(ConfigError, match="state 0 of the list is not rank 0"):
        one().load_state_dict(states[::-1])
    uneven = copy.deepcopy(states)
    uneven[1]["position"]["position"] += 1
    with pytest.raises(ConfigError, match=r"uneven positions \[1, 2\]"):
        one().load_state_dict(uneven)
    (tmp_path / "x").mkdir()
    other = h.jsonl_config(tmp_path / "x", n=26, packing=True)
    with pytest.raises(ConfigError, match="plan_key: saved"):  # other records, other plan
        build_dataloader(other, h.Toy(other), dp_size=1, grad_accum=2, micro_batch_size=2, **kw).load_state_dict(states)
    mid = build_dataloader(cfg, h.Toy(cfg), dp_size=1, grad_accum=2, micro_batch_size=2, **kw)
    next(mid)  # one micro-batch into a window: two ranks cannot split it
    with pytest.raises(ConfigError, match="1 global micro-batches of epoch 0 were consumed"):
        ranks[0].load_state_dict(mid.state_dict())
    old = copy.deepcopy(states[0])  # a state from before plan_key still resumes on its own layout
    del old["layout"]["plan_key"]
    ranks[0].load_state_dict(old)
    with pytest.raises(ConfigError, match="version 9"):
        ranks[0].load_state_dict({**states[0], "version": 9})


def test_streaming_states_stay_on_their_layout(tmp_path, h):
    cfg = h.jsonl_config(tmp_path, n=12, streaming=True)
    kw = dict(seq_len=128, micro_batch_size=1, num_epochs=1)
    ranks = _ranks(cfg, h, 2, 1, **kw)
    _steps(ranks, 1, 1)
    one = build_dataloader(cfg, h.Toy(cfg), dp_size=1, grad_accum=2, **kw)
    with pytest.raises(ConfigError, match="streaming shards records over dp_size x dataloader workers"):
        one.load_state_dict([r.state_dict() for r in ranks])

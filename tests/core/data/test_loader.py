"""The loader: exact resume (map-style and streaming, with workers), dp sharding, cache, read-ahead."""

import copy
import json

import pytest

from mm_core.data import build_dataloader


def _take(loader, k):
    return [next(loader) for _ in range(k)]


@pytest.mark.parametrize("streaming,packing,workers", [
    (False, True, 0), (False, False, 2), (True, True, 2), (True, False, 0),
])
def test_resume_equals_uninterrupted(tmp_path, h, streaming, packing, workers):
    cfg = h.jsonl_config(tmp_path, streaming=streaming, packing=packing, pack_buffer=7)
    cfg.dataloader_param.num_workers = workers
    kw = dict(seq_len=128, micro_batch_size=2, seed=3, num_epochs=2)
    full = list(build_dataloader(cfg, h.Toy(cfg), **kw))
    assert len(full) > 6
    for k in (2, 5):  # at the end of a pack buffer and in its middle
        first = build_dataloader(cfg, h.Toy(cfg), **kw)
        head = _take(first, k)
        first.read_ahead(3)  # pre-read batches are not part of the saved position
        state = copy.deepcopy(first.state_dict())
        json.dumps(state)  # plain data: goes into the checkpoint
        resumed = build_dataloader(cfg, h.Toy(cfg), **kw)
        resumed.load_state_dict(state)
        h.same(head + list(resumed), full)


def test_read_ahead_then_next_returns_the_same(tmp_path, h):
    cfg = h.jsonl_config(tmp_path, packing=True)
    loader = build_dataloader(cfg, h.Toy(cfg), seq_len=128, micro_batch_size=2, num_epochs=1)
    ahead = loader.read_ahead(3)
    h.same(ahead, _take(loader, 3))


def test_dp_ranks_share_nothing_and_get_equal_steps(tmp_path, h):
    cfg = h.jsonl_config(tmp_path, n=30)
    cfg.dataloader_param.shuffle = False
    cfg.dataloader_param.sampler_type = "sequential"
    kw = dict(seq_len=128, micro_batch_size=2, dp_size=2, num_epochs=1)
    ranks = [list(build_dataloader(cfg, h.Toy(cfg), dp_rank=r, **kw)) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == 7
    plans = [build_dataloader(cfg, h.Toy(cfg), dp_rank=r, **kw).plan(0) for r in range(2)]
    recs = [sorted(i for mb in p for row in mb for i in row) for p in plans]
    assert not set(recs[0]) & set(recs[1]) and len(recs[0]) == len(recs[1]) == 14


def test_streaming_dp_shards_are_disjoint(tmp_path, h):
    cfg = h.jsonl_config(tmp_path, n=24, streaming=True)
    seen = []
    for r in range(2):
        for b in build_dataloader(cfg, h.Toy(cfg), seq_len=128, micro_batch_size=1, dp_rank=r, dp_size=2, num_epochs=1):
            seen.append(tuple(b["input_ids"][0][b["attention_mask"][0] == 1].tolist()))
    assert len(seen) == 24 == len(set(seen))


def test_index_cache_reused_and_keyed_by_content(tmp_path, h):
    cfg = h.jsonl_config(tmp_path, n=12, cache_dir=str(tmp_path / "cache"))
    toy = h.Toy(cfg)
    build_dataloader(cfg, toy, seq_len=128, micro_batch_size=2)
    files = list((tmp_path / "cache").glob("index-*.json"))
    assert len(files) == 1 and toy.calls == 12
    toy2 = h.Toy(cfg)
    build_dataloader(cfg, toy2, seq_len=128, micro_batch_size=2)
    assert toy2.calls == 0  # lengths came from the cache
    assert not list((tmp_path / "cache").glob(".*tmp"))  # no temporary files left behind
    with open(tmp_path / "d.jsonl", "a") as f:
        f.write(json.dumps({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]}) + "\n")
    build_dataloader(cfg, h.Toy(cfg), seq_len=128, micro_batch_size=2)
    assert len(list((tmp_path / "cache").glob("index-*.json"))) == 2  # new content, new key


def test_index_pass_with_workers_matches_in_process(tmp_path, h):
    from mm_core.data.index import build_index
    from mm_core.data.records import iter_all_raw_records

    recs = [{"messages": [{"role": "user", "content": "q" * (i % 50 + 1)}, {"role": "assistant", "content": "a"}]}
            for i in range(1100)] + ["{bad"]
    h.write_jsonl(tmp_path / "big.jsonl", recs)
    cfg = h.data_config(tmp_path, "big.jsonl")
    raws = list(iter_all_raw_records(cfg.basic_parameters))
    serial = build_index(raws, cfg, h.Toy(cfg))
    cfg.dataloader_param.num_workers = 2
    parallel = build_index(raws, cfg, h.Toy(cfg))
    assert parallel.lengths == serial.lengths and parallel.bad == serial.bad == {1100: parallel.bad[1100]}
    assert serial.lengths[:3] == [5, 6, 7]


def test_engine_style_call_dict_config_len_and_grad_accum(tmp_path, h):
    from mm_core.data import load_data_config
    from mm_core.errors import ConfigError

    h.write_jsonl(tmp_path / "d.jsonl", h.make_records(tmp_path, 30))
    ref = {"dataset_param": {"dataset_type": "huggingface",
                             "basic_parameters": {"dataset_dir": str(tmp_path), "dataset": "d.jsonl"},
                             "preprocess_parameters": {"video_fps": 1.0}},
           "dataloader_param": {"shuffle": False, "sampler_type": "sequential"}}
    (tmp_path / "data.json").write_text(json.dumps(ref))
    cfg = load_data_config(str(tmp_path / "data.json"))
    assert cfg.preprocess_parameters.video_fps == 1.0 and cfg.dataloader_param.shuffle is False
    loader = build_dataloader(ref, h.Toy(cfg), seq_length=128, micro_batch_size=2, dp_size=2, grad_accum=2,
                              hf_config={"model_type": "x"}, num_epochs=1)
    assert len(loader) == 6 == len(list(loader))  # 15 micro-batches -> 12 (whole windows on 2 ranks) -> 6 each
    ref["dataset_param"]["basic_parameters"]["datset"] = "typo"
    with pytest.raises(ConfigError, match="basic_parameters.datset"):
        load_data_config(ref)


def test_streaming_with_more_shards_than_records_does_not_hang(tmp_path, h):
    cfg = h.jsonl_config(tmp_path, n=3, streaming=True)
    cfg.dataloader_param.num_workers = 2
    loader = build_dataloader(cfg, h.Toy(cfg), seq_len=128, micro_batch_size=1, dp_rank=1, dp_size=2)
    assert len([next(loader) for _ in range(4)]) == 4  # rank 1 worker 0 owns record 2; worker 1 owns none


def _index_in_child(cfg, toy_cls, q):
    from mm_core.data.index import build_index
    from mm_core.data.records import iter_all_raw_records

    raws = list(iter_all_raw_records(cfg.basic_parameters))
    q.put(build_index(raws, cfg, toy_cls(cfg)).lengths)


def test_processes_sharing_cache_dir_agree(tmp_path, h):
    import multiprocessing as mp

    cfg = h.jsonl_config(tmp_path, n=300, cache_dir=str(tmp_path / "cache"))
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    procs = [ctx.Process(target=_index_in_child, args=(cfg, h.Toy, q)) for _ in range(3)]
    for p in procs:
        p.start()
    results = [q.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    (cached,) = list((tmp_path / "cache").glob("index-*.json"))
    assert all(r == results[0] for r in results) and json.loads(cached.read_text())["lengths"] == results[0]
    assert not [f for f in (tmp_path / "cache").iterdir() if f.name.startswith(".")]


def _ids(batches) -> list[tuple[int, ...]]:
    return [tuple(b["input_ids"][r][b["attention_mask"][r] == 1].tolist())
            for b in batches for r in range(b["input_ids"].shape[0])]


def test_streaming_shuffle_reorders_each_window_and_resumes_exactly(tmp_path, h):
    """``shuffle`` used to be ignored by streaming; now each window of ``shuffle_buffer`` samples
    is shuffled, the same samples in another order, drawn again identically on resume."""
    cfg = h.jsonl_config(tmp_path, n=24, streaming=True)
    cfg.dataloader_param.shuffle_buffer = 8
    kw = dict(seq_len=128, micro_batch_size=2, seed=5, num_epochs=1)
    shuffled = list(build_dataloader(cfg, h.Toy(cfg), **kw))
    plain_cfg = copy.deepcopy(cfg)
    plain_cfg.dataloader_param.shuffle = False
    in_order = _ids(build_dataloader(plain_cfg, h.Toy(plain_cfg), **kw))
    got = _ids(shuffled)
    assert got != in_order
    for w in range(0, 24, 8):  # a window's samples stay in that window
        assert sorted(got[w:w + 8]) == sorted(in_order[w:w + 8])
    first = build_dataloader(cfg, h.Toy(cfg), **kw)
    head = _take(first, 5)  # mid-window
    resumed = build_dataloader(cfg, h.Toy(cfg), **kw)
    resumed.load_state_dict(copy.deepcopy(first.state_dict()))
    h.same(head + list(resumed), shuffled)
    other_seed = _ids(build_dataloader(cfg, h.Toy(cfg), **{**kw, "seed": 6}))
    assert other_seed != got

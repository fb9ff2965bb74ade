"""Readers with the attr mapping, and every bad-record kind skipped, counted, or (strict) fatal."""

import json

import pytest

from mm_core.data import BadRecord, DataError, build_dataloader
from mm_core.data.records import iter_all_raw_records, parse_record


def test_json_and_jsonl_with_attr_mapping_and_max_samples(tmp_path, h):
    h.make_image(tmp_path / "a.png")
    h.make_image(tmp_path / "b.png")
    sharegpt = [{"image": "a.png", "conversations": [
        {"from": "system", "value": "Be brief."}, {"from": "human", "value": "<image>What?"},
        {"from": "gpt", "value": "A."}, {"from": "human", "value": "unanswered"}]}]
    (tmp_path / "s.json").write_text(json.dumps(sharegpt))
    cfg = h.data_config(tmp_path, "s.json")
    a = cfg.attr
    a.messages, a.images, a.role_tag, a.content_tag, a.user_tag, a.assistant_tag = (
        "conversations", "image", "from", "value", "human", "gpt")
    (s,) = [parse_record(r, cfg.attr, str(tmp_path)) for r in iter_all_raw_records(cfg.basic_parameters)]
    assert s.system == "Be brief." and s.images == [str(tmp_path / "a.png")]
    assert s.messages == [{"role": "user", "content": "<image>What?"}, {"role": "assistant", "content": "A."}]
    assert s.where == f"{tmp_path / 's.json'}[0]"

    mllm = [{"images": ["a.png", "b.png"], "messages": [{"role": "user", "content": "<image><image>two"},
                                                         {"role": "assistant", "content": "ok"}]},
            {"messages": [{"role": "user", "content": "text only"}, {"role": "assistant", "content": "ok"}]},
            {"messages": [{"role": "user", "content": "third"}, {"role": "assistant", "content": "ok"}]}]
    h.write_jsonl(tmp_path / "m.jsonl", mllm)
    (tmp_path / "m2.json").write_text(json.dumps(mllm[:1]))
    cfg = h.data_config(tmp_path, "m.jsonl, m2.json", max_samples=3)
    samples = [parse_record(r, cfg.attr, str(tmp_path)) for r in iter_all_raw_records(cfg.basic_parameters)]
    assert [len(s.images) for s in samples] == [2, 0, 0]  # max_samples stops before m2.json
    assert samples[1].where == f"{tmp_path / 'm.jsonl'}:2"


def _bad_file(tmp_path, h):
    h.make_image(tmp_path / "ok.png")
    (tmp_path / "broken.png").write_bytes(b"not a png at all")
    good = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    lines = [
        good,
        "{not json",  # malformed_json
        {"messages": [{"role": "user", "content": "only a question"}]},  # no_assistant
        {"images": ["ok.png"], "messages": [{"role": "user", "content": "no placeholder"},
                                            {"role": "assistant", "content": "x"}]},  # placeholder_mismatch
        {"images": ["gone.png"], "messages": [{"role": "user", "content": "<image>"},
                                              {"role": "assistant", "content": "x"}]},  # missing_media
        {"images": ["broken.png"], "messages": [{"role": "user", "content": "<image>"},
                                                {"role": "assistant", "content": "x"}]},  # unreadable_media
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "y" * 300}]},  # too_long
        {"foo": 1},  # bad_format
        good,
    ]
    return h.write_jsonl(tmp_path / "bad.jsonl", lines)


@pytest.mark.parametrize("streaming", [False, True])
def test_each_bad_kind_skipped_and_counted(tmp_path, h, streaming):
    _bad_file(tmp_path, h)
    cfg = h.data_config(tmp_path, "bad.jsonl", streaming=streaming)
    loader = build_dataloader(cfg, h.Toy(cfg), seq_len=64, micro_batch_size=1, num_epochs=1)
    batches = list(loader)
    assert len(batches) == 2
    assert dict(loader.stats.counts) == {
        "malformed_json": 1, "no_assistant": 1, "placeholder_mismatch": 1, "missing_media": 1,
        "unreadable_media": 1, "too_long": 1, "bad_format": 1}
    assert "7 bad records skipped" in loader.stats.summary()
    assert any("bad.jsonl:2" in e for e in loader.stats.examples["malformed_json"])


@pytest.mark.parametrize("streaming", [False, True])
def test_strict_names_file_and_line(tmp_path, h, streaming):
    path = _bad_file(tmp_path, h)
    cfg = h.data_config(tmp_path, "bad.jsonl", streaming=streaming, strict=True)
    with pytest.raises(DataError, match=rf"{path}:2 \(malformed_json\)"):
        list(build_dataloader(cfg, h.Toy(cfg), seq_len=64, micro_batch_size=1, num_epochs=1))


def test_missing_dataset_file_is_a_clear_error(tmp_path, h):
    cfg = h.data_config(tmp_path, "nope.jsonl")
    with pytest.raises(DataError, match="nope.jsonl' does not exist"):
        build_dataloader(cfg, h.Toy(cfg), seq_len=64, micro_batch_size=1)


def test_bad_record_reason_is_checked():
    with pytest.raises(AssertionError):
        BadRecord("whatever", "f:1", "x")

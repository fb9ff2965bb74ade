"""The media path rule (mm_core.data.paths): relative to dataset_dir or absolute, one rule for
the loader and llava-to-mllm, and a missing file's error that shows how its path was built."""

import json
import os

import pytest

from mm_core.data.bad_records import BadRecord
from mm_core.data.paths import record_path, resolve_media


def test_record_path_is_what_resolve_media_finds(tmp_path):
    root, outside = tmp_path / "data", tmp_path / "elsewhere"
    (root / "coco").mkdir(parents=True)
    outside.mkdir()
    inner, other = root / "coco" / "a.jpg", outside / "b.jpg"
    inner.write_bytes(b"x")
    other.write_bytes(b"x")
    assert record_path(inner, root) == "coco/a.jpg"
    assert record_path(other, root) == str(other.resolve())  # absolute, never '..'
    for f in (inner, other):
        assert os.path.samefile(resolve_media(record_path(f, root), str(root), "r[0]"), f)


def test_missing_media_names_the_path_tried_and_the_setting(tmp_path):
    with pytest.raises(BadRecord) as e:
        resolve_media("data/COCO/x.jpg", "./data", "train.json[3]")
    msg = str(e.value)
    assert "data/data/COCO/x.jpg" in msg and "basic_parameters.dataset_dir './data'" in msg
    assert e.value.reason == "missing_media" and "train.json[3]" in msg
    with pytest.raises(BadRecord, match="absolute path in the record"):
        resolve_media(str(tmp_path / "nope.jpg"), "./data", "r")


def test_llava_to_mllm_writes_paths_relative_to_the_dataset_dir(tmp_path, h):
    from mm_core.data.llava import convert_llava

    (tmp_path / "coco").mkdir()
    h.make_image(tmp_path / "coco" / "1.jpg")
    recs = [{"image": "1.jpg", "conversations": [{"from": "human", "value": "<image>\nWhat?"},
                                                 {"from": "gpt", "value": "A bus."}]}]
    (tmp_path / "llava.json").write_text(json.dumps(recs))
    convert_llava(tmp_path / "llava.json", tmp_path / "coco", tmp_path / "out" / "a.json", dataset_dir=tmp_path)
    assert json.loads((tmp_path / "out" / "a.json").read_text())[0]["images"] == ["coco/1.jpg"]
    convert_llava(tmp_path / "llava.json", tmp_path / "coco", tmp_path / "out" / "b.json")  # default: output's folder
    assert json.loads((tmp_path / "out" / "b.json").read_text())[0]["images"] == [str(tmp_path / "coco" / "1.jpg")]

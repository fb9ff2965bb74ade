"""Video frame sampling (decord and PyAV agree), llava-to-mllm, and `mm-run data inspect`."""

import importlib.util
import json

import numpy as np
import pytest
import yaml

from mm_core.cli.main import main as mm_run
from mm_core.data.llava import convert_llava
from mm_core.data.media import load_video, sample_indices


def test_frame_count_rule_and_even_spread():
    assert sample_indices(17, 17 / 8, 2.0, 64).tolist() == [0, 5, 10, 16]  # floor(2.125 * 2) = 4
    assert len(sample_indices(100, 50.0, 2.0, 64)) == 64  # video_maxlen
    assert len(sample_indices(5, 10.0, 2.0, 64)) == 5  # total frames
    assert len(sample_indices(10, 0.2, 2.0, 64)) == 1  # at least one


# decord is an optional extra (mm-core[decord]): without it that case skips, PyAV still runs
_NO_DECORD = pytest.mark.skipif(importlib.util.find_spec("decord") is None,
                                reason="decord is not installed (optional extra mm-core[decord])")


@pytest.mark.parametrize("backend", [pytest.param("decord", marks=_NO_DECORD), "pyav"])
def test_decoders_agree_and_pad_odd_counts(tmp_path, h, backend):
    path = str(h.make_video(tmp_path / "v.mp4", n=13, fps=8))  # 1.625 s -> floor(3.25) = 3 frames -> padded to 4
    v = load_video(path, 2.0, 64, backend=backend)
    ref = load_video(path, 2.0, 64, backend="pyav")
    assert v.frames.shape == (4, 48, 64, 3) and v.total_frames == 13
    assert np.array_equal(v.frames[3], v.frames[2])  # the odd count is padded with the last frame
    assert np.array_equal(v.frames, ref.frames)
    assert v.sample_fps == pytest.approx(3 / 1.625)


def test_llava_to_mllm_skips_missing_image_and_refuses_overwrite(tmp_path, h, capsys):
    (tmp_path / "coco").mkdir()
    h.make_image(tmp_path / "coco" / "1.jpg")
    recs = [{"id": "1", "image": "1.jpg", "conversations": [{"from": "human", "value": "<image>\nWhat?"},
                                                             {"from": "gpt", "value": "A bus."}]},
            {"id": "2", "image": "2.jpg", "conversations": [{"from": "human", "value": "<image>\nWho?"},
                                                             {"from": "gpt", "value": "Me."}]},
            {"id": "3", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]}]
    (tmp_path / "llava.json").write_text(json.dumps(recs))
    out = tmp_path / "mllm.json"
    argv = ["data", "llava-to-mllm", "--input", str(tmp_path / "llava.json"), "--image-dir",
            str(tmp_path / "coco"), "--output", str(out)]
    assert mm_run(argv) == 1  # written, but a record was skipped
    cap = capsys.readouterr()
    assert "wrote 2 records" in cap.out
    assert cap.err.splitlines() == [f"mm-run data llava-to-mllm: error: {tmp_path / 'llava.json'}[1]: image "
                                    f"'{tmp_path / 'coco' / '2.jpg'}' does not exist (--image-dir "
                                    f"'{tmp_path / 'coco'}'): skipped"]
    got = json.loads(out.read_text())
    assert got[0] == {"images": ["coco/1.jpg"], "messages": [  # relative to the output's folder (the dataset dir)
        {"role": "user", "content": "<image>\nWhat?"}, {"role": "assistant", "content": "A bus."}]}
    assert got[1] == {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}
    before = out.read_text()
    assert mm_run(argv) == 1
    assert "already exists" in capsys.readouterr().err and out.read_text() == before
    counts = convert_llava(tmp_path / "llava.json", tmp_path / "coco", tmp_path / "again.json")
    assert counts["missing_image"] == 1 and counts["converted"] == 2


def test_inspect_reports_counts_histogram_and_bad_records(tmp_path, h, capsys, monkeypatch):
    recs = h.make_records(tmp_path, 9) + ["{broken"]
    h.write_jsonl(tmp_path / "d.jsonl", recs)
    cfg = {"data": {"basic_parameters": {"dataset_dir": str(tmp_path), "dataset": "d.jsonl", "template": "toy"}}}
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(cfg))
    from mm_core.plugins import get_plugin_manager
    from mm_core.specs import FormatterSpec

    pm = get_plugin_manager()
    monkeypatch.setitem(pm.formatters._entries, "toy", (FormatterSpec("toy", h.Toy), "test"))
    assert mm_run(["data", "inspect", str(tmp_path / "train.yaml"), "--seq-len", "512", "--json"]) == 1
    cap = capsys.readouterr()
    assert cap.err.splitlines() == [f"mm-run data inspect: error: {tmp_path / 'd.jsonl'}:10: malformed_json: "
                                    "Expecting property name enclosed in double quotes: line 1 column 2 (char 1)"]
    s = json.loads(cap.out)
    assert s["records"] == 10 and s["usable"] == 9 and s["bad_records"] == {"malformed_json": 1}
    assert s["images"] == 3 and s["vision_tokens"] > 0
    assert sum(b["count"] for b in s["histogram"]) == 9
    assert mm_run(["data", "inspect", str(tmp_path / "train.yaml")]) == 1
    assert "malformed_json=1" in capsys.readouterr().out

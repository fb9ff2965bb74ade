"""`mm-run infer` on bad input: each bad item gets one line naming the file and the reason, the
others are still answered, the exit status says some failed; a wrong --model is a clear error."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from mm_core.cli.main import main


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    from mm_qwen.tiny import save_tiny_model

    torch.set_num_threads(1)
    return save_tiny_model(tmp_path_factory.mktemp("hf"), with_processor=True, seed=3, std=0.2)


def _bad_files(d):
    """name -> (file, what its error must say)."""
    import av

    good = d / "good.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(good, quality=95)
    data = good.read_bytes()
    (d / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (d / "notes.jpg").write_text("these are notes, not a picture\n")
    (d / "empty.mp4").write_bytes(b"")
    c = av.open(str(d / "noframes.mp4"), "w")  # a video container that never got a frame
    s = c.add_stream("mpeg4", rate=4)
    s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
    c.start_encoding()  # writes the header: without it an empty container is not written at all
    for packet in s.encode():
        c.mux(packet)
    c.close()
    assert (d / "noframes.mp4").stat().st_size > 0
    return {"truncated": ({"image": "truncated.jpg"}, "truncated"),
            "not an image": ({"image": "notes.jpg"}, "cannot identify image"),
            "zero-byte video": ({"video": "empty.mp4"}, "empty (0 bytes)"),
            "video without frames": ({"video": "noframes.mp4"}, "no video stream"),
            "missing": ({"image": "nope.jpg"}, "does not exist")}


def test_bad_items_get_one_line_each_and_the_rest_are_answered(hf_dir, tmp_path, capsys):
    kinds = _bad_files(tmp_path)
    records = [{"prompt": "Describe it.", "image": "good.jpg"}]
    records += [{"prompt": f"What is in the {name}?", **media} for name, (media, _) in kinds.items()]
    records.append({"prompt": "Say hello."})
    (tmp_path / "batch.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n{not json\n")
    out = tmp_path / "answers.jsonl"
    rc = main(["infer", "--model", str(hf_dir), "--input", str(tmp_path / "batch.jsonl"), "--output", str(out),
               "--max-new-tokens", "3", "--batch-size", "4"])
    err = capsys.readouterr().err
    assert rc == 1 and "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("mm-run infer: error:")]
    assert len(errors) == len(kinds) + 1  # + the line that is not JSON
    for (media, reason), line in zip(kinds.values(), errors):
        name = next(iter(media.values()))
        assert name in line and reason in line, line
    assert "batch.jsonl:8" in errors[-1] and "not valid JSON" in errors[-1]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == len(records) + 1  # one row per item, in input order
    assert [("answer" in r) for r in rows] == [True, *[False] * len(kinds), True, False]
    assert all("error" in r for r in rows[1:-2])


def test_wrong_model_is_an_error_that_says_what_model_should_be(tmp_path, capsys):
    (tmp_path / "pic.jpg").write_bytes(b"")
    (tmp_path / "notamodel").mkdir()
    cases = {str(tmp_path / "missing"): "no such directory", "Qwen/Qwen2.5-VL-7B-Instruct": "hf://Qwen/Qwen2.5-VL-7B",
             str(tmp_path / "notamodel"): "neither an HF model", str(tmp_path / "pic.jpg"): "is a file",
             "hf://not a repo": "hf://OWNER/NAME"}
    for model, says in cases.items():
        assert main(["infer", "--model", model, "--prompt", "hi"]) == 2
        err = capsys.readouterr().err
        assert says in err and "Traceback" not in err and "Repo id" not in err, err

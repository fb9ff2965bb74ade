"""`mm-run infer` greedy output equals transformers' `generate`, token for token."""

from __future__ import annotations

import json

import pytest
import torch

from mm_core.cli.main import main
from mm_core.testing.hf_reference import greedy_replies, infer_video_matches_hf
from mm_core.testing.media import write_images, write_video


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    from mm_qwen.tiny import save_tiny_model

    torch.set_num_threads(1)
    return save_tiny_model(tmp_path_factory.mktemp("hf"), tied=True, with_processor=True, seed=3, std=0.2)


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    d = write_images(tmp_path_factory.mktemp("media"), {"a.png": (60, 90), "b.png": (100, 50)})
    write_video(d / "v.mp4", frames=8, fps=4)
    return d


@pytest.fixture(scope="module")
def processor(hf_dir):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(hf_dir)


def _transformers_generate(hf_dir, processor, records, max_new_tokens):
    from transformers import Qwen2_5_VLForConditionalGeneration

    from mm_core.cli.infer import prepare_batch, stop_token_ids

    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(hf_dir, dtype=torch.float32).eval()
    return greedy_replies(model, prepare_batch(processor, records), stop_token_ids(hf_dir, processor.tokenizer),
                          max_new_tokens)


def test_single_prompt_with_image_matches_transformers(hf_dir, processor, media, tmp_path, capsys):
    out = tmp_path / "answers.jsonl"
    rc = main(["infer", "--model", str(hf_dir), "--image", str(media / "a.png"), "--prompt", "Describe this image.",
               "--max-new-tokens", "10", "--output", str(out)])
    assert rc == 0
    ours = [json.loads(line) for line in out.read_text().splitlines()]
    record = {"prompt": "Describe this image.", "images": [str(media / "a.png")], "videos": [], "system": None}
    ref = _transformers_generate(hf_dir, processor, [record], 10)
    assert [r["token_ids"] for r in ours] == ref
    assert capsys.readouterr().out.strip() == ours[0]["answer"].strip()


def test_batch_file_with_two_images_and_a_video_matches_transformers(hf_dir, processor, media, tmp_path, capsys):
    records = [{"prompt": "Compare the two pictures.", "images": ["a.png", "b.png"]},
               {"prompt": "What happens?", "video": "v.mp4"},
               {"prompt": "Say hello."}]
    batch_file = media / "batch.jsonl"
    batch_file.write_text("\n".join(json.dumps(r) for r in records))
    assert main(["infer", "--model", str(hf_dir), "--input", str(batch_file), "--max-new-tokens", "8"]) == 0
    ours = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    full = [{"prompt": r["prompt"], "images": [str(media / p) for p in r.get("images", [])],
             "videos": [str(media / r["video"])] if "video" in r else [], "system": None} for r in records]
    ref = _transformers_generate(hf_dir, processor, full, 8)
    assert [r["token_ids"] for r in ours] == ref
    assert len({tuple(r) for r in ref}) > 1  # the rows really differ: the check can fail


def test_odd_frame_count_video_is_what_the_qwen_processor_makes_of_it(processor, tmp_path):
    """infer hands the processor the 5 sampled frames; Qwen2.5-VL's pads them to its temporal patch (2)."""
    write_video(tmp_path / "odd.mp4", frames=10, fps=4)  # 2.5 s at 2 fps: 5 frames, indices linspace(0, 9, 5)
    ours = infer_video_matches_hf(processor, tmp_path / "odd.mp4", [0, 2, 4, 6, 9])
    assert ours["video_grid_thw"][0, 0] == 3


def test_missing_media_and_mm_dir_without_processor_are_clear_errors(hf_dir, tmp_path, capsys):
    missing = tmp_path / "nope.png"
    assert main(["infer", "--model", str(hf_dir), "--image", str(missing), "--prompt", "hi"]) == 1
    err = capsys.readouterr().err
    assert "does not exist" in err and str(missing) in err and "Traceback" not in err
    mm_dir = tmp_path / "mm"
    mm_dir.mkdir()
    (mm_dir / "latest_checkpointed_iteration.txt").write_text("release")
    assert main(["infer", "--model", str(mm_dir), "--prompt", "hi"]) == 2
    assert "--processor" in capsys.readouterr().err


def test_mm_dir_with_processor_answers_like_the_hf_dir(hf_dir, media, tmp_path):
    from mm_convert.cli import main as convert

    mm_dir = tmp_path / "mm"
    assert convert(["Qwen2_5_VLConverter", "hf_to_mm", "--cfg.hf_config.hf_dir", str(hf_dir), "--cfg.mm_dir",
                    str(mm_dir), "--cfg.parallel_config.tp_size", "1"]) in (0, None)
    answers = {}
    for name, extra in (("hf", ["--model", str(hf_dir)]), ("mm", ["--model", str(mm_dir), "--processor", str(hf_dir)])):
        out = tmp_path / f"{name}.jsonl"
        assert main(["infer", *extra, "--image", str(media / "b.png"), "--prompt", "What is it?",
                     "--max-new-tokens", "6", "--output", str(out)]) == 0
        answers[name] = [json.loads(line)["token_ids"] for line in out.read_text().splitlines()]
    assert answers["mm"] == answers["hf"] and len(answers["hf"][0]) > 0

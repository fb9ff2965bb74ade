"""`mm-run infer` on a transformers-saved tiny GLM-4.1V (offline GLM processor in the model dir) gives
transformers' greedy tokens for an image, a video (frame groups with their seconds) and a batch
file; an mm dir converted by GlmConverter answers like the HF dir."""

from __future__ import annotations

import json

import pytest
import torch

from mm_core.cli.main import main
from mm_core.testing.hf_reference import greedy_replies, infer_video_matches_hf
from mm_core.testing.media import write_images, write_video

MAX_FRAMES = 4  # a 10 s clip at 2 fps capped to 4 frames: spread over the clip, so the seconds are 0, 3, 6, 9.5


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    from mm_glm.tiny import save_tiny_model

    torch.set_num_threads(1)
    return save_tiny_model(tmp_path_factory.mktemp("glm_hf"), with_processor=True, hidden=64, tied=True,
                           seed=3, std=0.2)


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    d = write_images(tmp_path_factory.mktemp("media"), {"a.png": (60, 90)})
    write_video(d / "v.mp4", frames=20, fps=2)
    return d


@pytest.fixture(scope="module")
def reference(hf_dir):
    from transformers import AutoProcessor, Glm4vForConditionalGeneration

    return AutoProcessor.from_pretrained(hf_dir), Glm4vForConditionalGeneration.from_pretrained(
        hf_dir, dtype=torch.float32).eval()


def _record(prompt, images=(), videos=()):
    return {"prompt": prompt, "images": [str(p) for p in images], "videos": [str(p) for p in videos], "system": None}


def _transformers_generate(hf_dir, reference, record, max_new_tokens):
    """transformers' greedy reply to one record (cut after the first end-of-turn id), and its prompt."""
    from mm_core.cli.infer import prepare_batch, stop_token_ids

    processor, model = reference
    batch = prepare_batch(processor, [record], max_video_frames=MAX_FRAMES)
    (reply,) = greedy_replies(model, batch, stop_token_ids(hf_dir, processor.tokenizer), max_new_tokens)
    return reply, processor.tokenizer.decode(batch["input_ids"][0])


def _infer(*argv):
    return ["infer", *map(str, argv), "--max-video-frames", str(MAX_FRAMES)]


def test_stop_ids_are_glm_end_of_turn_tokens(hf_dir, reference):
    from mm_core.cli.infer import stop_token_ids
    from mm_glm.testing_tokenizer import TOKEN_IDS

    want = sorted(TOKEN_IDS[t] for t in ("<|endoftext|>", "<|user|>", "<|observation|>"))
    assert stop_token_ids(hf_dir, reference[0].tokenizer) == want
    (hf_dir / "generation_config.json").rename(hf_dir / "gen.json")  # without it: config.json's ids
    try:
        assert stop_token_ids(hf_dir, reference[0].tokenizer) == want
    finally:
        (hf_dir / "gen.json").rename(hf_dir / "generation_config.json")


def test_image_prompt_matches_transformers(hf_dir, reference, media, tmp_path, capsys):
    out = tmp_path / "answers.jsonl"
    assert main(_infer("--model", hf_dir, "--image", media / "a.png", "--prompt", "Describe this image.",
                       "--max-new-tokens", 8, "--output", out)) == 0
    ours = json.loads(out.read_text())
    ref, prompt = _transformers_generate(hf_dir, reference, _record("Describe this image.", [media / "a.png"]), 8)
    assert prompt.startswith("[gMASK]<sop><|user|>\n<|begin_of_image|><|image|>")
    assert prompt.endswith("<|end_of_image|>Describe this image.<|assistant|>\n")
    assert ours["token_ids"] == ref and len(ref) == 8
    assert capsys.readouterr().out.strip() == ours["answer"].strip()


def test_video_prompt_has_the_frame_seconds_and_matches_transformers(hf_dir, reference, media, tmp_path):
    from mm_core.data.media import load_video
    from mm_core.data.video_times import video_seconds

    out = tmp_path / "answers.jsonl"
    assert main(_infer("--model", hf_dir, "--video", media / "v.mp4", "--prompt", "What happens?",
                       "--max-new-tokens", 8, "--output", out)) == 0
    ref, prompt = _transformers_generate(hf_dir, reference, _record("What happens?", videos=[media / "v.mp4"]), 8)
    assert json.loads(out.read_text())["token_ids"] == ref
    # each frame group is followed by the second its first frame was shown at, as the training formatter writes
    seconds = video_seconds(load_video(str(media / "v.mp4"), 2.0, MAX_FRAMES), 2.0, MAX_FRAMES)[::2]
    stamps = [int(s) for s in seconds]
    assert stamps == [0, 6]  # not the 0, 5 of evenly spaced frames: the capped sampling spreads them
    assert "".join(f"<|end_of_image|>{s}" for s in stamps) in prompt.replace("<|begin_of_image|>", "").replace(
        "<|image|>", "")


def test_odd_frame_count_video_is_what_the_glm_processor_makes_of_it(reference, tmp_path):
    """infer hands the processor the 5 sampled frames and their seconds; Glm4vProcessor pads them to
    its temporal patch (2) and writes one second per frame group (0, 1, 2)."""
    write_video(tmp_path / "odd.mp4", frames=10, fps=4)  # 2.5 s at 2 fps: 5 frames, indices linspace(0, 9, 5)
    ours = infer_video_matches_hf(reference[0], tmp_path / "odd.mp4", [0, 2, 4, 6, 9])
    assert ours["video_grid_thw"][0, 0] == 3


def test_batch_file_matches_transformers_row_by_row(hf_dir, reference, media, capsys):
    """transformers' GLM-4.1V cannot batch an image row with a video row (both are <|image|> tokens
    to its placeholder check), so each row is its own reference; ours answers them in one batch."""
    records = [{"prompt": "Describe this image.", "image": "a.png"},
               {"prompt": "What happens?", "video": "v.mp4"},
               {"prompt": "Say hello."}]
    batch_file = media / "batch.jsonl"
    batch_file.write_text("\n".join(json.dumps(r) for r in records))
    assert main(_infer("--model", hf_dir, "--input", batch_file, "--max-new-tokens", 6)) == 0
    ours = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    full = [_record(r["prompt"], [media / r["image"]] if "image" in r else [],
                    [media / r["video"]] if "video" in r else []) for r in records]
    ref = [_transformers_generate(hf_dir, reference, r, 6)[0] for r in full]
    assert [r["token_ids"] for r in ours] == ref
    assert len({tuple(r) for r in ref}) == 3  # the rows really differ: the check can fail


def test_mm_dir_with_processor_answers_like_the_hf_dir(hf_dir, media, tmp_path):
    from mm_convert.cli import main as convert

    mm_dir = tmp_path / "mm"
    assert convert(["GlmConverter", "hf_to_mm", "--cfg.hf_config.hf_dir", str(hf_dir), "--cfg.mm_dir",
                    str(mm_dir), "--cfg.parallel_config.tp_size", "1"]) in (0, None)
    answers = {}
    for name, extra in (("hf", ["--model", hf_dir]), ("mm", ["--model", mm_dir, "--processor", hf_dir])):
        out = tmp_path / f"{name}.jsonl"
        assert main(_infer(*extra, "--image", media / "a.png", "--video", media / "v.mp4", "--prompt",
                           "Compare them.", "--max-new-tokens", 6, "--output", out)) == 0
        answers[name] = json.loads(out.read_text())["token_ids"]
    assert answers["mm"] == answers["hf"] and len(answers["hf"]) == 6

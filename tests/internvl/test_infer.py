"""`mm-run infer` on a transformers-saved tiny InternVL3 gives transformers' greedy tokens, for an image
and for a video (frames as tiles), with the offline InternVLProcessor in the model directory."""

from __future__ import annotations

import json

import pytest
import torch

from mm_core.cli.main import main
from mm_core.testing.hf_reference import greedy_replies, infer_video_matches_hf
from mm_core.testing.media import write_images, write_video


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    """The tiny model with InternVL3's vocabulary and <IMG_CONTEXT> id, and its processor files."""
    from transformers import InternVLConfig, InternVLForConditionalGeneration

    from mm_internvl.tiny import tiny_config_dict
    from mm_internvl.tokenizer import TOKEN_IDS, VOCAB_SIZE, save_offline_processor

    torch.set_num_threads(1)
    torch.manual_seed(5)
    d = tmp_path_factory.mktemp("internvl_hf")
    cfg = tiny_config_dict(vocab_size=VOCAB_SIZE) | {"image_token_id": TOKEN_IDS["<IMG_CONTEXT>"]}
    model = InternVLForConditionalGeneration(InternVLConfig.from_dict(cfg)).eval()
    with torch.no_grad():  # larger logits: greedy choices are not near-ties between implementations
        model.lm_head.weight.mul_(20)
    model.save_pretrained(d)
    return save_offline_processor(d, tile_size=56, image_seq_length=4)


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    d = write_images(tmp_path_factory.mktemp("media"), {"a.png": (60, 130)})  # 2x1 tiles + thumbnail
    write_video(d / "v.mp4", frames=16, fps=8)  # 2 s at 2 fps: 4 frames
    return d


@pytest.fixture(scope="module")
def reference(hf_dir):
    from transformers import AutoProcessor, InternVLForConditionalGeneration

    return AutoProcessor.from_pretrained(hf_dir), InternVLForConditionalGeneration.from_pretrained(
        hf_dir, dtype=torch.float32).eval()


def _transformers_generate(hf_dir, reference, records, max_new_tokens):
    from mm_core.cli.infer import prepare_batch, stop_token_ids

    processor, model = reference
    batch = prepare_batch(processor, records)
    return greedy_replies(model, batch, stop_token_ids(hf_dir, processor.tokenizer), max_new_tokens), batch


def _record(prompt, images=(), videos=()):
    return {"prompt": prompt, "images": list(images), "videos": list(videos), "system": None}


def test_image_prompt_matches_transformers(hf_dir, reference, media, tmp_path):
    out = tmp_path / "answers.jsonl"
    rc = main(["infer", "--model", str(hf_dir), "--image", str(media / "a.png"), "--prompt", "Describe this image.",
               "--max-new-tokens", "8", "--output", str(out)])
    assert rc == 0
    ours = [json.loads(line) for line in out.read_text().splitlines()]
    ref, batch = _transformers_generate(hf_dir, reference, [_record("Describe this image.", [str(media / "a.png")])], 8)
    assert batch["pixel_values"].shape[0] == 3  # two tiles and the thumbnail
    assert [r["token_ids"] for r in ours] == ref and len(ref[0]) > 1


def test_video_prompt_matches_transformers(hf_dir, reference, media, tmp_path):
    out = tmp_path / "answers.jsonl"
    rc = main(["infer", "--model", str(hf_dir), "--video", str(media / "v.mp4"), "--prompt", "What happens?",
               "--max-new-tokens", "8", "--output", str(out)])
    assert rc == 0
    ours = [json.loads(line) for line in out.read_text().splitlines()]
    ref, batch = _transformers_generate(hf_dir, reference, [_record("What happens?", videos=[str(media / "v.mp4")])], 8)
    assert batch["pixel_values"].shape[0] == 4  # one tile per sampled frame
    assert [r["token_ids"] for r in ours] == ref and len(ref[0]) > 1


def test_odd_frame_count_video_is_what_the_internvl_processor_makes_of_it(reference, tmp_path):
    """InternVL3 has no temporal patch: 5 sampled frames are 5 tiles (no frame repeated to an even count)."""
    write_video(tmp_path / "odd.mp4", frames=10, fps=4)  # 2.5 s at 2 fps: 5 frames, indices linspace(0, 9, 5)
    ours = infer_video_matches_hf(reference[0], tmp_path / "odd.mp4", [0, 2, 4, 6, 9])
    assert ours["pixel_values"].shape[0] == 5


def test_batch_of_image_video_and_text_rows_matches_transformers(hf_dir, reference, media, capsys):
    records = [{"prompt": "Describe.", "image": "a.png"}, {"prompt": "What happens?", "video": "v.mp4"},
               {"prompt": "Say hello."}]
    batch_file = media / "batch.jsonl"
    batch_file.write_text("\n".join(json.dumps(r) for r in records))
    assert main(["infer", "--model", str(hf_dir), "--input", str(batch_file), "--max-new-tokens", "6"]) == 0
    ours = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    full = [_record("Describe.", [str(media / "a.png")]), _record("What happens?", videos=[str(media / "v.mp4")]),
            _record("Say hello.")]
    ref, _ = _transformers_generate(hf_dir, reference, full, 6)
    assert [r["token_ids"] for r in ours] == ref
    assert len({tuple(r) for r in ref}) > 1  # the rows really differ: the check can fail

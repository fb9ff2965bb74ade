"""InternVL3's formatter (template internvl2_5) against transformers' InternVLProcessor: the same token
ids and pixel values for text, tiled images (min/max_dynamic_patch) and videos; labels on replies only."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from mm_core.batch import IGNORE_INDEX
from mm_core.data.config import DataConfig
from mm_core.data.records import Sample
from mm_core.testing.hf_reference import hf_content
from mm_core.testing.media import write_images, write_video

TILE, PER_TILE = 56, 4  # the tiny config: 56 px tiles of 14 px patches, pixel shuffle 0.5


@pytest.fixture(scope="module")
def proc_dir(tmp_path_factory):
    from mm_internvl.tiny import tiny_config_dict
    from mm_internvl.tokenizer import save_offline_processor

    d = tmp_path_factory.mktemp("internvl_processor")
    (d / "config.json").write_text(json.dumps(tiny_config_dict()))
    return save_offline_processor(d, tile_size=TILE, image_seq_length=PER_TILE)


@pytest.fixture(scope="module")
def processor(proc_dir):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(proc_dir)


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    sizes = {"wide": (42, 198), "square": (56, 56), "tall": (150, 40), "big": (300, 280)}
    d = write_images(tmp_path_factory.mktemp("media"), {f"{name}.png": hw for name, hw in sizes.items()})
    write_video(d / "clip.mp4", frames=15, fps=6)  # 2.5 s at 2 fps: 5 frames, an odd count
    return d


def _formatter(proc_dir, **pre):
    from mm_internvl.formatter import InternVLFormatter

    cfg = DataConfig()
    cfg.preprocess_parameters.model_name_or_path = str(proc_dir)
    for k, v in pre.items():
        setattr(cfg.preprocess_parameters, k, v)
    return InternVLFormatter(cfg)


def _reference(processor, question, answer, images, videos, **image_kwargs):
    from PIL import Image

    conv = [{"role": "user", "content": hf_content(question)}, {"role": "assistant", "content": answer}]
    text = processor.apply_chat_template(conv, tokenize=False)
    kw = {}
    if images:
        kw["images"] = [Image.open(p) for p in images]
        kw["images_kwargs"] = image_kwargs
    if videos:
        kw["videos"] = videos
        kw["videos_kwargs"] = {"do_sample_frames": False}
    return processor(text=[text], return_tensors="pt", **kw)


CASES = {  # question, answer, images, videos, preprocess settings
    "text": ("Hello, how are you?", "Fine, thanks!", [], [], {}),
    "image": ("<image>\nWhat colour is it?", "Red.", ["wide"], [], {}),
    "three_images": ("Compare <image>, <image> and <image>.", "The last is tall.", ["square", "big", "tall"], [], {}),
    "min_max_tiles": ("<image>\n<image>\nDescribe.", "Noise.", ["wide", "square"], [],
                      {"min_dynamic_patch": 2, "max_dynamic_patch": 4}),
    "one_tile": ("<image>\nDescribe.", "Noise.", ["big"], [], {"max_dynamic_patch": 1}),
    "video": ("<video>\nWhat happens?", "A bar grows.", [], ["clip"], {}),
    "image_and_video": ("<image>\nThen <video>\nSame?", "No.", ["tall"], ["clip"], {}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_ids_and_pixels_equal_the_processor(case, proc_dir, processor, media):
    from mm_internvl.video import load_frames

    question, answer, images, videos, pre = CASES[case]
    images = [str(media / f"{n}.png") for n in images]
    videos = [str(media / f"{n}.mp4") for n in videos]
    fmt = _formatter(proc_dir, **pre)
    messages = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    ours = fmt.encode(Sample(messages, images, videos))
    clips = [load_frames(v, fmt.config.preprocess_parameters.video_fps, 64) for v in videos]
    kw = {"min_patches": pre.get("min_dynamic_patch", 1), "max_patches": pre.get("max_dynamic_patch", 12)}
    ref = _reference(processor, question, answer, images, clips, **kw)
    assert ours["input_ids"] == ref["input_ids"][0].tolist()
    if images or videos:
        assert torch.equal(ours["pixel_values"], ref["pixel_values"])
    else:
        assert "pixel_values" not in ours
    # the length pre-pass (headers only) counts the same tokens
    assert fmt.encode(Sample(messages, images, videos), pixels=False)["input_ids"] == ours["input_ids"]


def test_tokens_per_tile_and_tiles_follow_the_config(proc_dir, media):
    fmt = _formatter(proc_dir)
    assert (fmt.tile_size, fmt.tokens_per_tile) == (TILE, PER_TILE)
    out = fmt.encode(Sample([{"role": "user", "content": "<image>"}, {"role": "assistant", "content": "ok"}],
                            [str(media / "wide.png")], []))
    n = out["pixel_values"].shape[0]
    assert n > 2 and out["input_ids"].count(fmt.image_token_id) == n * PER_TILE  # grid + thumbnail, 4 tokens each


def test_decord_and_pyav_sample_the_same_frames(media):
    pytest.importorskip("decord", reason="decord is an optional extra; PyAV is the fallback")
    from mm_internvl.video import load_frames

    decord = load_frames(str(media / "clip.mp4"), 2.0, 64, backend="decord")
    assert np.array_equal(decord, load_frames(str(media / "clip.mp4"), 2.0, 64, backend="pyav"))


def test_video_frames_span_the_clip_unpadded(proc_dir, media):
    from mm_internvl.video import load_frames

    tok = _formatter(proc_dir).tokenizer
    pyav = load_frames(str(media / "clip.mp4"), 2.0, 64, backend="pyav")
    assert len(pyav) == 5  # floor(2.5 s * 2 fps), odd and not padded
    assert pyav[0, 0, 0, 0] < 30 and pyav[-1, 0, 0, 0] > 150  # first and last frames (red grows by 12)
    fmt = _formatter(proc_dir)
    out = fmt.encode(Sample([{"role": "user", "content": "<video>\nWhat?"}, {"role": "assistant", "content": "x"}],
                            [], [str(media / "clip.mp4")]))
    text = tok.decode(out["input_ids"])
    assert "Frame1: <img>" in text and "Frame5: <img>" in text and "Frame6" not in text
    assert out["pixel_values"].shape == (5, 3, TILE, TILE)


def test_labels_cover_the_replies_only(proc_dir):
    fmt = _formatter(proc_dir)
    tok = fmt.tokenizer
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there."},
                {"role": "user", "content": "Bye"}, {"role": "assistant", "content": "Goodbye."}]
    out = fmt.encode(Sample(messages, [], []))
    learnt = tok.decode([t for t, lab in zip(out["input_ids"], out["labels"]) if lab != IGNORE_INDEX])
    assert learnt == "Hello there.<|im_end|>\nGoodbye.<|im_end|>\n"
    assert all(lab in (IGNORE_INDEX, t) for t, lab in zip(out["input_ids"], out["labels"]))
    fmt.config.basic_parameters.mask_history = True
    out = fmt.encode(Sample(messages, [], []))
    assert tok.decode([t for t, lab in zip(out["input_ids"], out["labels"]) if lab != IGNORE_INDEX]) == \
        "Goodbye.<|im_end|>\n"
    fmt.config.basic_parameters.mask_history, fmt.config.basic_parameters.train_on_prompt = False, True
    out = fmt.encode(Sample(messages, [], [], system="Be brief."))
    assert out["labels"] == out["input_ids"] and tok.decode(out["input_ids"]).startswith(
        "<|im_start|>system\nBe brief.<|im_end|>\n")


def test_bad_media_and_settings_are_named(proc_dir, media, tmp_path):
    from mm_core.data.bad_records import BadRecord
    from mm_core.errors import ConfigError

    fmt = _formatter(proc_dir)
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video")
    with pytest.raises(BadRecord, match="broken.mp4"):
        fmt.encode(Sample([{"role": "user", "content": "<video>"}, {"role": "assistant", "content": "x"}],
                          [], [str(broken)], where="data.jsonl:3"))
    with pytest.raises(ConfigError, match="min_dynamic_patch"):
        _formatter(proc_dir, min_dynamic_patch=3, max_dynamic_patch=2)
    with pytest.raises(ConfigError, match="config.json"):
        _formatter(tmp_path)
    other = tmp_path / "other"  # a vision tower of 112 px tiles with the 56 px processor files
    shutil.copytree(proc_dir, other)
    cfg = json.loads((other / "config.json").read_text())
    cfg["vision_config"]["image_size"] = [112, 112]
    (other / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="56x56 px tiles but config.json's vision tower takes 112 px"):
        _formatter(other).encode(Sample([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "x"}]))


def test_text_only_batches_get_one_black_tile(proc_dir):
    from mm_core.data.collate import collate

    fmt = _formatter(proc_dir)
    sample = fmt.encode(Sample([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}], [], []))
    batch = collate([sample], pad_token_id=fmt.pad_token_id, dummy_vision=fmt.dummy_vision())
    assert batch["pixel_values"].shape == (1, 3, TILE, TILE) and bool(batch["dummy_vision"])


def test_original_remote_code_directory_encodes_the_same(proc_dir, media, tmp_path):
    """InternVLChatModel's config.json (force_image_size) with its tokenizer and a CLIP-style
    preprocessor config, as OpenGVLab ships them: the same ids and tiles as the -hf directory."""
    from mm_internvl.tokenizer import IMAGENET_MEAN, IMAGENET_STD, build_tokenizer

    original = tmp_path / "InternVL3-tiny"
    build_tokenizer().save_pretrained(original)
    (original / "config.json").write_text(json.dumps({
        "architectures": ["InternVLChatModel"], "model_type": "internvl_chat", "force_image_size": TILE,
        "downsample_ratio": 0.5, "template": "internvl2_5", "vision_config": {"image_size": TILE, "patch_size": 14}}))
    (original / "preprocessor_config.json").write_text(json.dumps({
        "crop_size": TILE, "do_center_crop": True, "do_normalize": True, "do_resize": True, "resample": 3,
        "feature_extractor_type": "CLIPFeatureExtractor", "image_mean": IMAGENET_MEAN, "image_std": IMAGENET_STD,
        "size": TILE}))
    sample = Sample([{"role": "user", "content": "<image>\n<video>\nSame?"}, {"role": "assistant", "content": "No."}],
                    [str(media / "wide.png")], [str(media / "clip.mp4")])
    want, got = _formatter(proc_dir).encode(sample), _formatter(original).encode(sample)
    assert got["input_ids"] == want["input_ids"] and torch.equal(got["pixel_values"], want["pixel_values"])

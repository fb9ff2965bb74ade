"""Glm4vFormatter: ids and pixels equal Glm4vProcessor's (chat template + processor call); labels exact."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from mm_core.batch import IGNORE_INDEX
from mm_core.data.config import DataConfig
from mm_core.data.records import Sample
from mm_core.testing.hf_reference import hf_content
from mm_core.testing.media import write_images, write_video

EOT, USER, ASSISTANT, OBSERVATION, IMAGE = 151329, 151336, 151337, 151338, 151343
BEGIN_VIDEO, END_VIDEO, BEGIN_IMAGE = 151341, 151342, 151339
NL = 10  # "\n" in the test tokenizer (byte-level id of byte 10)
PIXELS = {"image_min_pixels": 3136, "image_max_pixels": 50176, "video_min_pixels": 3136, "video_max_pixels": 12544}


@pytest.fixture(scope="module")
def proc_dir(tmp_path_factory):
    from mm_glm.testing_tokenizer import save_glm_processor

    return save_glm_processor(tmp_path_factory.mktemp("glm_proc"), **PIXELS)


@pytest.fixture(scope="module")
def processor(proc_dir):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(proc_dir)


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    d = write_images(tmp_path_factory.mktemp("media"), {"a.jpg": (120, 90), "b.png": (64, 200)})
    write_video(d / "v.mp4", frames=21, fps=4)  # 5.25 s, so the seconds reach 4
    return d


def config(proc_dir, **basic) -> DataConfig:
    cfg = DataConfig()
    for k, v in PIXELS.items():
        setattr(cfg.preprocess_parameters, k, v)
    cfg.preprocess_parameters.model_name_or_path = str(proc_dir)
    cfg.basic_parameters.template = "glm4v"
    for k, v in basic.items():
        setattr(cfg.basic_parameters, k, v)
    return cfg


def expected_labels(ids: list[int], *, last_only: bool = False) -> list[int]:
    """From each reply's first token (after '<|assistant|>\\n') through its stop token, found in HF's ids."""
    labels = [IGNORE_INDEX] * len(ids)
    starts = [i + 2 for i in range(len(ids) - 1) if ids[i:i + 2] == [ASSISTANT, NL]]
    for s in starts[-1:] if last_only else starts:
        e = next(j for j in range(s, len(ids)) if ids[j] in (USER, OBSERVATION, EOT))
        labels[s:e + 1] = ids[s:e + 1]
    return labels


CASES = {
    "text_only": ([{"role": "user", "content": "Hello, how are you?"},
                   {"role": "assistant", "content": "Fine, thanks!"}], [], [], None),
    "system": ([{"role": "user", "content": "What is 12345 + 1?"},
                {"role": "assistant", "content": "12346"}], [], [], "You are terse."),
    "one_image": ([{"role": "user", "content": "<image>\nWhat are the colors of the bus?"},
                   {"role": "assistant", "content": "The bus is white and red."}], ["a.jpg"], [], None),
    "two_images": ([{"role": "user", "content": "Compare <image> and <image>."},
                    {"role": "assistant", "content": "The second is wider."}], ["a.jpg", "b.png"], [], None),
    "video": ([{"role": "user", "content": "<video>What happens?"},
               {"role": "assistant", "content": "It gets brighter."}], [], ["v.mp4"], None),
    "image_and_video": ([{"role": "user", "content": "<image>Then <video>: same?"},
                         {"role": "assistant", "content": "No."}], ["b.png"], ["v.mp4"], None),
    "multi_turn": ([{"role": "user", "content": "<image>Describe."}, {"role": "assistant", "content": "A square."},
                    {"role": "user", "content": "Colour?"}, {"role": "assistant", "content": " Mixed\n\ncolours."}],
                   ["a.jpg"], [], None),
}


def hf_reference(processor, media, messages, images, videos, system):
    """Glm4vProcessor's encoding of the conversation (the checkpoint's own path)."""
    from transformers.video_utils import VideoMetadata

    from mm_core.data.media import load_video, sample_indices

    conv = [{"role": "system", "content": system}] if system else []
    conv += [{"role": m["role"], "content": hf_content(m["content"]) if m["role"] == "user" else m["content"]}
             for m in messages]
    text = processor.apply_chat_template(conv, tokenize=False)
    kw = {}
    if images:
        kw["images"] = [Image.open(media / i) for i in images]
    if videos:
        v = load_video(str(media / videos[0]), 2.0, 64)
        fps = v.total_frames / v.duration
        idx = sample_indices(v.total_frames, v.duration, 2.0, 64).tolist()
        idx += idx[-1:] * (len(v.frames) - len(idx))  # load_video repeats the last frame to an even count
        kw["videos"] = [v.frames]
        kw["video_metadata"] = [VideoMetadata(total_num_frames=v.total_frames, fps=fps, frames_indices=idx)]
        kw["do_sample_frames"] = False
        kw["videos_kwargs"] = {"size": {"shortest_edge": 3136 * len(v.frames), "longest_edge": 12544 * len(v.frames)}}
    return processor(text=[text], return_tensors="pt", **kw)


@pytest.mark.parametrize("case", list(CASES))
def test_ids_pixels_and_labels_match_glm4v_processor(case, proc_dir, processor, media):
    from mm_glm.formatter import Glm4vFormatter

    messages, images, videos, system = CASES[case]
    mask_history = case == "multi_turn"
    fmt = Glm4vFormatter(config(proc_dir, mask_history=mask_history))
    sample = Sample(messages, [str(media / i) for i in images], [str(media / v) for v in videos], system)
    out = fmt.encode(sample)
    ref = hf_reference(processor, media, messages, images, videos, system)
    ids = ref["input_ids"][0].tolist() + [EOT]  # a training sample ends with <|endoftext|>
    assert out["input_ids"] == ids
    assert out["labels"] == expected_labels(ids, last_only=mask_history)
    for key in ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw"):
        assert (key in out) == (key in ref), key
        if key in ref:
            assert torch.equal(out[key], ref[key].to(out[key].dtype)), key
    assert fmt.encode(sample, pixels=False)["input_ids"] == ids  # the length pre-pass counts the same tokens


def test_video_is_frame_groups_with_their_seconds(proc_dir, media):
    from mm_glm.formatter import Glm4vFormatter

    fmt = Glm4vFormatter(config(proc_dir))
    out = fmt.encode(Sample([{"role": "user", "content": "<video>What happens?"},
                             {"role": "assistant", "content": "It gets brighter."}], [], [str(media / "v.mp4")]))
    t, h, w = out["video_grid_thw"][0].tolist()
    assert t == 5  # 21 frames at 4 fps, sampled at 2 fps: floor(5.25 * 2) = 10 frames, 5 groups of 2
    ids = out["input_ids"]
    video = ids[ids.index(BEGIN_VIDEO) + 1:ids.index(END_VIDEO)]
    text = fmt.tokenizer.decode(video).replace("<|image|>", "")
    # 10 frames evenly over 21 (indices 0,2,4,6,8,11,13,15,17,20) at 4 fps; each group shows its first frame's second
    assert text == "<|begin_of_image|><|end_of_image|>0" "<|begin_of_image|><|end_of_image|>1" \
                   "<|begin_of_image|><|end_of_image|>2" "<|begin_of_image|><|end_of_image|>3" \
                   "<|begin_of_image|><|end_of_image|>4"
    assert video.count(IMAGE) == t * h * w // 4 and video.count(BEGIN_IMAGE) == t
    assert len(out["pixel_values_videos"]) == t * h * w


def test_observation_turn_and_train_on_prompt(proc_dir):
    from mm_glm.formatter import Glm4vFormatter

    messages = [{"role": "user", "content": "Weather?"}, {"role": "assistant", "content": "Calling the tool."},
                {"role": "observation", "content": "sunny"}, {"role": "assistant", "content": "It is sunny."}]
    fmt = Glm4vFormatter(config(proc_dir))
    out = fmt.encode(Sample(messages))
    text = fmt.tokenizer.decode(out["input_ids"])
    assert text == "[gMASK]<sop><|user|>\nWeather?<|assistant|>\nCalling the tool.<|observation|>\nsunny" \
                   "<|assistant|>\nIt is sunny.<|endoftext|>"
    learnt = fmt.tokenizer.decode([t for t in out["labels"] if t != IGNORE_INDEX])
    assert learnt == "Calling the tool.<|observation|>It is sunny.<|endoftext|>"  # each reply and its stop token
    everything = Glm4vFormatter(config(proc_dir, train_on_prompt=True)).encode(Sample(messages))
    assert everything["labels"] == everything["input_ids"]


def test_observation_records_are_read_for_glm_and_refused_by_name_elsewhere(proc_dir):
    """A sharegpt-style record with a tool result parses for GLM's template into the sample the
    formatter encodes with <|observation|> (151338); a template without that turn names the record,
    the field and the valid roles."""
    from mm_core.data.bad_records import BadRecord
    from mm_core.data.records import RawRecord, parse_for
    from mm_glm.formatter import Glm4vFormatter

    turns = [{"from": "user", "value": "Weather?"}, {"from": "assistant", "value": "Calling the tool."},
             {"from": "observation", "value": "sunny"}, {"from": "assistant", "value": "It is sunny."}]
    cfg = config(proc_dir)
    cfg.attr.messages, cfg.attr.role_tag, cfg.attr.content_tag = "conversations", "from", "value"
    raw = RawRecord("d.jsonl:7", {"conversations": turns})
    fmt = Glm4vFormatter(cfg)
    sample = parse_for(raw, cfg, fmt)
    assert [m["role"] for m in sample.messages] == ["user", "assistant", "observation", "assistant"]
    ids = fmt.encode(sample)["input_ids"]
    assert ids.count(OBSERVATION) == 1 and ids.index(OBSERVATION) > ids.index(ASSISTANT)
    assert ids == fmt.encode(Sample([{"role": m["from"], "content": m["value"]} for m in turns]))["input_ids"]
    cfg.basic_parameters.template = "qwen2vl"
    with pytest.raises(BadRecord, match=r"d\.jsonl:7: bad_format: turn 2: 'from' is 'observation' \(a tool result\), "
                                        r"which template 'qwen2vl' has no turn for; valid roles: assistant, "
                                        r"system, user"):
        parse_for(raw, cfg, object())  # a formatter without extra_roles
    cfg.basic_parameters.template = "glm4v"
    first = RawRecord("d.jsonl:8", {"conversations": [turns[2], *turns[1:]]})  # a tool result cannot open
    with pytest.raises(BadRecord, match="turns must alternate user, assistant, user or observation, assistant"):
        parse_for(first, cfg, fmt)


def test_bad_role_and_unreadable_media_are_bad_records(proc_dir, tmp_path):
    from mm_core.data.bad_records import BadRecord
    from mm_glm.formatter import Glm4vFormatter

    fmt = Glm4vFormatter(config(proc_dir))
    with pytest.raises(BadRecord, match="role 'tool'"):
        fmt.encode(Sample([{"role": "tool", "content": "x"}, {"role": "assistant", "content": "y"}], where="d.jsonl:3"))
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(BadRecord, match="d.jsonl:4.*cannot read image"):
        fmt.encode(Sample([{"role": "user", "content": "<image>?"}, {"role": "assistant", "content": "y"}],
                          [str(tmp_path / "broken.png")], where="d.jsonl:4"))


def test_dummy_vision_fingerprint_and_pickling(proc_dir):
    import pickle

    from mm_glm.formatter import Glm4vFormatter

    fmt = Glm4vFormatter(config(proc_dir))
    dummy = fmt.dummy_vision()
    assert dummy["pixel_values"].shape == (4, 1176) and dummy["image_grid_thw"].tolist() == [[1, 2, 2]]
    assert fmt.pad_token_id == EOT and fmt.image_token_id == IMAGE
    assert fmt.fingerprint() != Glm4vFormatter(config(proc_dir, train_on_thinking=False)).fingerprint()
    clone = pickle.loads(pickle.dumps(fmt))
    assert clone._processor is None and clone.fingerprint() == fmt.fingerprint()


def test_glm_loader_packs_samples_with_the_dummy_image_for_text_only_batches(proc_dir, media, tmp_path):
    import json

    from mm_core.data import build_dataloader

    recs = [{"images": ["a.jpg"], "messages": [{"role": "user", "content": "<image>What?"},
                                               {"role": "assistant", "content": "A picture."}]},
            {"videos": ["v.mp4"], "messages": [{"role": "user", "content": "<video>And?"},
                                               {"role": "assistant", "content": "It brightens."}]},
            {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    cfg = config(proc_dir, dataset_dir=str(media), dataset=str(tmp_path / "d.jsonl"), packing=True)
    cfg.dataloader_param.shuffle = False
    cfg.dataloader_param.sampler_type = "sequential"
    (b,) = list(build_dataloader(cfg, seq_len=512, micro_batch_size=1, num_epochs=1, packing=True))
    assert b["num_samples"].item() == 3 and b["segment_ids"].max().item() == 2 and not b["dummy_vision"].item()
    assert b["image_grid_thw"].tolist() == [[1, 8, 6]] and b["video_grid_thw"].tolist() == [[5, 4, 4]]
    assert (b["input_ids"] == IMAGE).sum().item() == 12 + 5 * 4  # the image's tokens and the video's frames
    assert len(b["pixel_values"]) == 48 and len(b["pixel_values_videos"]) == 80
    assert (b["input_ids"] == EOT).sum().item() >= 3  # each sample ends with <|endoftext|> (padding too)
    (tmp_path / "t.jsonl").write_text(json.dumps(recs[2]) + "\n")
    cfg.basic_parameters.dataset = str(tmp_path / "t.jsonl")
    (b,) = list(build_dataloader(cfg, seq_len=128, micro_batch_size=1, num_epochs=1, packing=False))
    assert b["dummy_vision"].item() and b["image_grid_thw"].tolist() == [[1, 2, 2]]
    assert b["pixel_values"].shape == (4, 1176) and not b["pixel_values"].any()

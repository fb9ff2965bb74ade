"""Qwen2VLFormatter: token ids equal processor.apply_chat_template + processor(...); labels exact."""

import pytest
import torch
from PIL import Image

from mm_core.batch import IGNORE_INDEX
from mm_core.data import build_dataloader
from mm_core.data.config import DataConfig
from mm_core.data.media import load_video
from mm_core.data.records import Sample
from mm_core.testing.hf_reference import hf_content
from mm_core.testing.media import write_images, write_video

IM_START, IM_END, NL, ASSISTANT = 151644, 151645, 198, 77091


@pytest.fixture(scope="module")
def proc_dir(tmp_path_factory):
    from mm_qwen.tokenizer import save_offline_processor

    d = tmp_path_factory.mktemp("qwen_proc")
    save_offline_processor(d, image_min_pixels=3136, image_max_pixels=262144, video_min_pixels=3136,
                           video_max_pixels=16384)
    return d


@pytest.fixture(scope="module")
def processor(proc_dir):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(proc_dir)


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    d = write_images(tmp_path_factory.mktemp("media"), {"a.jpg": (120, 90), "b.png": (64, 200)})
    write_video(d / "v.mp4", frames=21, fps=8)
    return d


def _config(proc_dir, **basic):
    cfg = DataConfig()
    pre = cfg.preprocess_parameters
    pre.model_name_or_path = str(proc_dir)
    pre.image_min_pixels, pre.image_max_pixels, pre.video_min_pixels, pre.video_max_pixels = 3136, 262144, 3136, 16384
    cfg.basic_parameters.template = "qwen2vl"  # the processor-only dir has no config.json naming the model
    for k, v in basic.items():
        setattr(cfg.basic_parameters, k, v)
    return cfg


def _expected_labels(ids, *, last_only=False):
    """Assistant replies (content + <|im_end|> + '\\n') found in the processor's own ids."""
    labels = [IGNORE_INDEX] * len(ids)
    starts = [i + 3 for i in range(len(ids) - 2) if ids[i:i + 3] == [IM_START, ASSISTANT, NL]]
    for s in starts[-1:] if last_only else starts:
        e = ids.index(IM_END, s)
        for j in range(s, e + 2):
            labels[j] = ids[j]
    return labels


CASES = {
    "text_only": ([{"role": "user", "content": "Hello, how are you?"},
                   {"role": "assistant", "content": "Fine, thanks!"}], [], []),
    "one_image": ([{"role": "user", "content": "<image>\nWhat are the colors of the bus?"},
                   {"role": "assistant", "content": "The bus is white and red."}], ["a.jpg"], []),
    "two_images": ([{"role": "user", "content": "Compare <image> and <image>."},
                    {"role": "assistant", "content": "The second is wider."}], ["a.jpg", "b.png"], []),
    "video": ([{"role": "user", "content": "<video>What happens?"},
               {"role": "assistant", "content": "It gets brighter."}], [], ["v.mp4"]),
    "multi_turn": ([{"role": "user", "content": "<image>Describe."}, {"role": "assistant", "content": "A square."},
                    {"role": "user", "content": "Colour?"}, {"role": "assistant", "content": " Mixed\n\ncolours."}],
                   ["a.jpg"], []),
}


@pytest.mark.parametrize("case", list(CASES))
def test_ids_pixels_and_labels_match_hf_processor(case, proc_dir, processor, media):
    from transformers.video_utils import VideoMetadata

    from mm_qwen.formatter import Qwen2VLFormatter

    messages, images, videos = CASES[case]
    mask_history = case == "multi_turn"
    fmt = Qwen2VLFormatter(_config(proc_dir, mask_history=mask_history))
    sample = Sample(messages, [str(media / i) for i in images], [str(media / v) for v in videos])
    out = fmt.encode(sample)

    conv = [{"role": m["role"], "content": hf_content(m["content"]) if m["role"] == "user" else m["content"]}
            for m in messages]
    text = processor.apply_chat_template(conv, tokenize=False)
    kw = {}
    if images:
        kw["images"] = [Image.open(media / i) for i in images]
    if videos:
        v = load_video(str(media / videos[0]), 2.0, 64)
        kw["videos"] = [v.frames]
        kw["video_metadata"] = [VideoMetadata(total_num_frames=len(v.frames), fps=v.sample_fps)]
        kw["cap_pixels_per_frame"] = False
    ref = processor(text=[text], return_tensors="pt", **kw)
    ids = ref["input_ids"][0].tolist()
    assert out["input_ids"] == ids
    assert out["labels"] == _expected_labels(ids, last_only=mask_history)
    for key in ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw"):
        assert (key in out) == (key in ref), key
        if key in ref:
            assert torch.equal(out[key], ref[key].to(out[key].dtype)), key
    if videos:
        assert out["video_grid_thw"][0, 0] == 3  # 21 frames at 8 fps: floor(2.625 * 2) = 5, padded to 6
        assert torch.allclose(out["second_per_grid_ts"], ref["second_per_grid_ts"].float())
    assert fmt.encode(sample, pixels=False)["input_ids"] == ids  # the length pre-pass counts the same tokens


def test_train_on_prompt_and_system(proc_dir, media):
    from mm_qwen.formatter import Qwen2VLFormatter

    fmt = Qwen2VLFormatter(_config(proc_dir, train_on_prompt=True))
    sample = Sample([{"role": "user", "content": "<image>Hi"}, {"role": "assistant", "content": "Yo"}],
                    [str(media / "a.jpg")], system="Be terse.")
    out = fmt.encode(sample)
    text = fmt.tokenizer.decode(out["input_ids"][:8])
    assert text.startswith("<|im_start|>system\nBe terse.<|im_end|>")
    vision = [i for i, t in enumerate(out["input_ids"]) if t == fmt.image_token_id]
    assert vision and all(out["labels"][i] == IGNORE_INDEX for i in vision)
    others = [i for i in range(len(out["labels"])) if i not in set(vision)]
    assert all(out["labels"][i] == out["input_ids"][i] for i in others)


def test_qwen_loader_packed_with_dummy_vision(proc_dir, media, tmp_path):
    import json

    recs = [{"images": ["a.jpg"], "messages": [{"role": "user", "content": "<image>What?"},
                                               {"role": "assistant", "content": "A picture."}]},
            {"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]},
            {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    cfg = _config(proc_dir, dataset_dir=str(media), dataset=str(tmp_path / "d.jsonl"), packing=True)
    cfg.dataloader_param.shuffle = False
    cfg.dataloader_param.sampler_type = "sequential"
    (b,) = list(build_dataloader(cfg, seq_len=256, micro_batch_size=1, num_epochs=1, packing=True))
    assert b["num_samples"].item() == 3 and b["segment_ids"].max().item() == 2
    assert b["input_ids"].shape[1] % 8 == 0 and not b["dummy_vision"].item()
    assert b["image_grid_thw"].tolist() == [[1, 8, 6]]
    assert (b["input_ids"] == 151655).sum().item() == 12
    cfg.basic_parameters.dataset = str(tmp_path / "d.jsonl")
    cfg.basic_parameters.max_samples = None
    text_only = [r for r in recs if "images" not in r]
    (tmp_path / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in text_only))
    cfg.basic_parameters.dataset = str(tmp_path / "t.jsonl")
    (b,) = list(build_dataloader(cfg, seq_len=256, micro_batch_size=2, num_epochs=1, packing=False))
    assert b["dummy_vision"].item() and b["image_grid_thw"].tolist() == [[1, 2, 2]]
    assert b["pixel_values"].shape == (4, 1176) and not b["pixel_values"].any()

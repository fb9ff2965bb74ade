"""InternVL's own training files through the data pipeline: the seed's data config names (data_path,
data_folder, min/max_dynamic_patch), JSONL records with image / image list / video / none, and the
internvl2_5 formatter chosen from the model directory; micro-batches hold every tile in order."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mm_core.batch import IGNORE_INDEX
from mm_core.testing.media import write_video


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from mm_internvl.tiny import tiny_config_dict
    from mm_internvl.tokenizer import save_offline_processor

    d = tmp_path_factory.mktemp("internvl_processor")
    (d / "config.json").write_text(json.dumps(tiny_config_dict()))
    return save_offline_processor(d, tile_size=56, image_seq_length=4)


def test_internvl_jsonl_trains_through_the_loader(model_dir, tmp_path, monkeypatch):
    from PIL import Image

    from mm_core.data import build_dataloader

    media = tmp_path / "media"
    media.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (40, 170, 3), dtype=np.uint8)).save(media / "wide.png")
    Image.fromarray(rng.integers(0, 255, (56, 56, 3), dtype=np.uint8)).save(media / "square.png")
    write_video(media / "clip.mp4", frames=12, fps=6)  # 2 s at 2 fps: 4 frames
    records = [
        {"id": 0, "image": "wide.png", "conversations": [{"from": "human", "value": "What is it?"},
                                                          {"from": "gpt", "value": "Noise."}]},
        {"id": 1, "image": ["wide.png", "square.png"], "conversations": [
            {"from": "human", "value": "Image-1: <image>\nImage-2: <image>\nSame?"}, {"from": "gpt", "value": "No."}]},
        {"id": 2, "video": "clip.mp4", "conversations": [{"from": "human", "value": "<video>\nWhat moves?"},
                                                         {"from": "gpt", "value": "A bar."}]},
        {"id": 3, "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello."}]},
    ]
    (tmp_path / "train.jsonl").write_text("\n".join(json.dumps(r) for r in records))
    monkeypatch.chdir(tmp_path)
    config = {"dataset_param": {
        "basic_parameters": {"data_path": "train.jsonl", "data_folder": str(media)},
        "preprocess_parameters": {"model_name_or_path": str(model_dir), "max_dynamic_patch": 2}},
        "dataloader_param": {"shuffle": False, "sampler_type": "sequential", "drop_last": False}}
    loader = build_dataloader(config, seq_len=4096, micro_batch_size=1, num_epochs=1)
    assert loader.config.basic_parameters.template == "internvl2_5"  # from the model dir's config.json
    batches = list(loader)
    assert loader.stats.total == 0  # no record skipped
    tiles = [int(b["pixel_values"].shape[0]) for b in batches]
    # wide: 2x1 tiles + thumbnail (max 2 tiles); + square: 1 tile; video: 4 frames; text: the dummy tile
    assert tiles == [3, 4, 4, 1] and [bool(b["dummy_vision"]) for b in batches] == [False] * 3 + [True]
    tok = loader.formatter.tokenizer
    ctx = tok.convert_tokens_to_ids("<IMG_CONTEXT>")
    for b, n in zip(batches[:3], tiles):
        ids = b["input_ids"][0]
        assert int((ids == ctx).sum()) == 4 * n  # 4 tokens per 56 px tile
    first = tok.decode(batches[0]["input_ids"][0][batches[0]["attention_mask"][0].bool()])
    assert "<|im_start|>user\n<img>" in first and "</img>\nWhat is it?" in first  # InternVL's <image>\n rule
    assert "Frame4: <img>" in tok.decode(batches[2]["input_ids"][0])
    learnt = batches[3]["labels"][0]
    assert tok.decode(learnt[learnt != IGNORE_INDEX]) == "Hello.<|im_end|>\n"
    assert torch.isfinite(batches[1]["pixel_values"]).all()

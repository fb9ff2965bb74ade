"""Packed sequences: samples in one row never attend to each other and their positions restart."""

from __future__ import annotations

import torch

from mm_qwen.model import build_model
from mm_qwen.tiny import make_inputs, tiny_config_dict

SAMPLES = [
    [("text", 3), ("image", (1, 8, 12)), ("text", 4)],
    [("text", 5), ("video", (2, 8, 4), 1.0), ("text", 2), ("image", (1, 4, 4)), ("text", 1)],
    [("text", 9)],
]


def _sample_alone(packed: dict, i: int, config: dict) -> dict:
    """Sample ``i`` of the packed row as its own batch: its tokens and its media only."""
    seg = packed["segment_ids"][0]
    ids = packed["input_ids"][0]
    alone = {"input_ids": ids[seg == i][None]}
    for kind, pix_key in (("image", "pixel_values"), ("video", "pixel_values_videos")):
        if f"{kind}_grid_thw" not in packed:
            continue
        grids = packed[f"{kind}_grid_thw"]
        merge = config["vision_config"]["spatial_merge_size"] ** 2
        tokens = (grids.prod(-1) // merge).tolist()
        owners = seg[ids == config[f"{kind}_token_id"]].split(tokens)
        mine = [j for j, o in enumerate(owners) if int(o[0]) == i]
        if not mine:
            continue
        starts = torch.cat([torch.zeros(1, dtype=torch.long), grids.prod(-1).cumsum(0)])
        alone[pix_key] = torch.cat([packed[pix_key][starts[j]:starts[j + 1]] for j in mine])
        alone[f"{kind}_grid_thw"] = grids[mine]
        if kind == "video":
            alone["second_per_grid_ts"] = packed["second_per_grid_ts"][mine]
    return alone


def test_packed_row_of_three_samples_equals_each_sample_alone():
    torch.set_num_threads(1)
    config = tiny_config_dict()
    torch.manual_seed(0)
    model = build_model(config, device="cpu").eval()
    packed = make_inputs(config, SAMPLES, pack=True)
    pad = 4  # trailing padding after the three samples
    for key, fill in (("input_ids", 2), ("attention_mask", 0), ("segment_ids", -1), ("labels", -100)):
        packed[key] = torch.cat([packed[key], torch.full((1, pad), fill)], 1)
    with torch.no_grad():
        out = model(**packed)
    seg = packed["segment_ids"][0]
    for i in range(len(SAMPLES)):
        alone = _sample_alone(packed, i, config)
        with torch.no_grad():
            ref = model(**alone)
        torch.testing.assert_close(out[0, seg == i], ref[0], atol=1e-5, rtol=1e-5)
    # the check can fail: without segment ids the samples see each other
    with torch.no_grad():
        unpacked = model(**{k: v for k, v in packed.items() if k != "segment_ids"})
    assert not torch.allclose(unpacked[0, seg == 1], out[0, seg == 1], atol=1e-3)


def test_bfloat16_model_runs_close_to_float32():
    config = tiny_config_dict()
    torch.manual_seed(0)
    model = build_model(config, device="cpu").eval()
    batch = make_inputs(config, SAMPLES, pack=True)
    with torch.no_grad():
        ref = model(**batch)
        out = model.to(torch.bfloat16)(**batch)
    assert out.dtype == torch.bfloat16
    assert (out.float() - ref).abs().max() < 0.05 * ref.abs().max()

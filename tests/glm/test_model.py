"""GLM-4.1V specifics beyond the conformance suite: the interleaved partial rotary against
transformers' own function, mRoPE positions for images and videos mixed in one row (which
transformers' forward cannot take, but its ``get_rope_index`` can), packed samples, config errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mm_glm.rope_index import mrope_position_ids, token_types
from mm_glm.tiny import SMALL_VOCAB, make_inputs, save_tiny_model, tiny_config_dict

MIXED = [[("text", 2), ("image", (4, 6)), ("text", 3), ("video", (3, 4, 4), 2), ("text", 2), ("image", (6, 4))],
         [("text", 4), ("video", (1, 6, 6), 1), ("text", 1)]]


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.set_num_threads(1)
    return save_tiny_model(tmp_path_factory.mktemp("glm"), vision_depth=2, text_layers=2)


@pytest.fixture(scope="module")
def config(hf_dir: Path) -> dict:
    return json.loads((hf_dir / "config.json").read_text())


def test_rotary_interleaved_matches_transformers_partial_rotary() -> None:
    from transformers.models.glm4v.modeling_glm4v import apply_rotary_pos_emb

    from mm_core.kernels import get_kernel, reference
    from mm_glm.rope_index import mrope_cos_sin_interleaved

    positions = torch.randint(0, 50, (3, 2, 7))
    cos, sin = mrope_cos_sin_interleaved(positions, 16, 10000.0, (2, 3, 3))
    q, k = torch.randn(2, 4, 7, 32), torch.randn(2, 2, 7, 32)
    want_q, want_k = apply_rotary_pos_emb(q, k, cos, sin)
    assert get_kernel("rotary_interleaved", "cpu") is reference.rotary_interleaved
    torch.testing.assert_close(reference.rotary_interleaved(q, cos[:, None], sin[:, None]), want_q)
    torch.testing.assert_close(reference.rotary_interleaved(k, cos[:, None], sin[:, None]), want_k)
    assert torch.equal(reference.rotary_interleaved(q, cos[:, None], sin[:, None])[..., 16:], q[..., 16:])


def test_token_types_are_the_processors_mm_token_type_ids(config: dict) -> None:
    batch = make_inputs(config, MIXED, padding="left")
    ours = token_types(batch["input_ids"], image_token_id=config["image_token_id"],
                       video_start_token_id=config["video_start_token_id"],
                       video_end_token_id=config["video_end_token_id"])
    assert torch.equal(ours, batch["mm_token_type_ids"])
    assert set(ours.unique().tolist()) == {0, 1, 2}


def test_positions_of_images_and_videos_in_one_row_equal_get_rope_index(hf_dir: Path, config: dict) -> None:
    """Left-padded rows mixing images and a 3-group video: ours equal transformers' positions and deltas."""
    from transformers import Glm4vForConditionalGeneration

    hf = Glm4vForConditionalGeneration.from_pretrained(hf_dir, dtype=torch.float32).eval()
    batch = make_inputs(config, MIXED, padding="left")
    want, delta = hf.model.get_rope_index(batch["input_ids"], batch["mm_token_type_ids"], batch["image_grid_thw"],
                                          batch["video_grid_thw"], attention_mask=batch["attention_mask"])
    seg = torch.where(batch["attention_mask"].bool(), 0, -1)
    got, next_pos = mrope_position_ids(batch["input_ids"], batch["mm_token_type_ids"], spatial_merge_size=2,
                                       image_grid_thw=batch["image_grid_thw"], video_grid_thw=batch["video_grid_thw"],
                                       segment_ids=seg)
    assert torch.equal(got, want)
    assert torch.equal(next_pos, batch["attention_mask"].sum(1) + delta[:, 0])


def test_mixed_row_features_land_on_their_own_placeholders(hf_dir: Path, config: dict) -> None:
    """Images and video frames share one token id: each kind's features go to its own runs, so the
    row equals transformers' model fed with the same embeddings and positions."""
    from transformers import Glm4vForConditionalGeneration

    from mm_core.nn.pretrained import load_pretrained

    hf = Glm4vForConditionalGeneration.from_pretrained(hf_dir, dtype=torch.float32).eval()
    ours = load_pretrained(hf_dir, dtype=torch.float32).eval()
    batch = make_inputs(config, MIXED[:1], seed=4)
    with torch.no_grad():
        image = torch.cat(hf.model.get_image_features(batch["pixel_values"], batch["image_grid_thw"]).pooler_output)
        video = torch.cat(hf.model.get_video_features(batch["pixel_values_videos"],
                                                      batch["video_grid_thw"]).pooler_output)
        embeds = hf.model.get_input_embeddings()(batch["input_ids"])
        types = batch["mm_token_type_ids"][..., None]
        embeds = embeds.masked_scatter(types == 1, image).masked_scatter(types == 2, video)
        positions, _ = hf.model.get_rope_index(batch["input_ids"], batch["mm_token_type_ids"],
                                               batch["image_grid_thw"], batch["video_grid_thw"])
        want = hf(inputs_embeds=embeds, position_ids=positions, attention_mask=batch["attention_mask"]).logits
        got = ours(**batch)
    assert (got - want).abs().max().item() <= 1e-4


def test_packed_samples_equal_each_sample_alone(hf_dir: Path, config: dict) -> None:
    from mm_core.nn.pretrained import load_pretrained

    model = load_pretrained(hf_dir, dtype=torch.float32).eval()
    samples = [make_inputs(config, [rows], seed=i) for i, rows in enumerate(
        [[("text", 3), ("image", (4, 6)), ("text", 2)], [("text", 5)], [("text", 1), ("video", (2, 4, 4), 1)]])]
    packed = {"input_ids": torch.cat([s["input_ids"] for s in samples], 1),
              "segment_ids": torch.cat([torch.full_like(s["input_ids"], i) for i, s in enumerate(samples)], 1)}
    for key in ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw"):
        packed[key] = torch.cat([s[key] for s in samples if key in s])
    with torch.no_grad():
        out = model(**packed)
        alone = torch.cat([model(**{k: v for k, v in s.items() if k not in ("labels",)}) for s in samples], 1)
    torch.testing.assert_close(out, alone, atol=1e-5, rtol=1e-5)


def test_missing_partial_rotary_factor_is_named() -> None:
    from mm_core.errors import ConfigError
    from mm_glm.config import parse_config

    cfg = tiny_config_dict()
    del cfg["text_config"]["rope_parameters"]["partial_rotary_factor"]
    with pytest.raises(ConfigError, match="partial_rotary_factor is missing"):
        parse_config(cfg)


def test_placeholder_count_mismatch_is_a_clear_error(hf_dir: Path, config: dict) -> None:
    from mm_core.nn.pretrained import load_pretrained

    model = load_pretrained(hf_dir, dtype=torch.float32).eval()
    batch = make_inputs(config, [[("text", 2), ("image", (4, 4)), ("text", 2)]])
    batch["input_ids"][0, 3] = SMALL_VOCAB["image_end_token_id"]  # one placeholder fewer
    with pytest.raises(ValueError, match="has 3 image placeholder tokens but its image inputs give 4 features"):
        model(**batch)
    types = (batch["input_ids"] == config["image_token_id"]).long()
    with pytest.raises(ValueError, match="the image placeholder run at token 4 has 3 tokens, its grid"):
        mrope_position_ids(batch["input_ids"], types, spatial_merge_size=2, image_grid_thw=batch["image_grid_thw"])

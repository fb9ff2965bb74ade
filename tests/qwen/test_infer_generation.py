"""Batched generation: left padding and the KV cache give each row what it gets alone; sampling
filters (temperature, top-k, top-p) and stop tokens behave as documented."""

from __future__ import annotations

import torch

from mm_core.generation import GenerationConfig, _filter_logits, generate
from mm_qwen.model import build_model
from mm_qwen.tiny import make_inputs, tiny_config_dict

ROWS = [[("text", 3), ("image", (1, 8, 8)), ("text", 2)],
        [("text", 7)],
        [("text", 2), ("video", (2, 4, 4), 1.0), ("text", 1)]]


def _model():
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = build_model(tiny_config_dict(), device="cpu").eval()
    with torch.no_grad():  # larger logits so greedy choices are not near-ties
        model.text_decoder.output_layer.weight.mul_(20)
    return model


def _prompt(batch: dict) -> dict:
    return {k: v for k, v in batch.items() if k not in ("labels", "mm_token_type_ids")}


def _alone_and_batched(config: dict) -> tuple[list[dict], dict]:
    """Each row as its own prompt, and the same rows left-padded into one batch."""
    alone = [_prompt(make_inputs(config, [row], seed=i)) for i, row in enumerate(ROWS)]
    width = max(a["input_ids"].shape[1] for a in alone)
    batch = {"input_ids": torch.full((len(alone), width), 2), "attention_mask": torch.zeros(len(alone), width,
                                                                                         dtype=torch.long)}
    for i, a in enumerate(alone):
        n = a["input_ids"].shape[1]
        batch["input_ids"][i, width - n:] = a["input_ids"][0]
        batch["attention_mask"][i, width - n:] = 1
    for key in ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw", "second_per_grid_ts"):
        parts = [a[key] for a in alone if key in a]
        if parts:
            batch[key] = torch.cat(parts)
    return alone, batch


def test_batched_left_padded_greedy_equals_each_row_alone_and_the_uncached_model():
    model = _model()
    rows, batch = _alone_and_batched(tiny_config_dict())
    assert (batch["attention_mask"] == 0).any()  # really left-padded
    cfg = GenerationConfig(max_new_tokens=6)
    together = generate(model, batch, cfg)
    for i, alone in enumerate(rows):
        assert generate(model, alone, cfg) == [together[i]]
        # without the cache: rerun the whole sequence for each new token
        ids = alone["input_ids"]
        for tok in together[i]:
            with torch.no_grad():
                logits = model(**{**alone, "input_ids": ids, "attention_mask": torch.ones_like(ids)})
            assert int(logits[0, -1].argmax()) == tok
            ids = torch.cat([ids, torch.tensor([[tok]])], 1)


def test_stop_tokens_end_rows_early():
    model, config = _model(), tiny_config_dict()
    batch = _prompt(make_inputs(config, ROWS))
    free = generate(model, batch, GenerationConfig(max_new_tokens=5))
    stop = free[0][1]  # row 0 stops at its second token, the other rows go on unless they meet it
    out = generate(model, batch, GenerationConfig(max_new_tokens=5, stop_token_ids=[stop]))
    assert out[0] == free[0][:2]
    for full, got in zip(free[1:], out[1:]):
        cut = full.index(stop) + 1 if stop in full else len(full)
        assert got == full[:cut]


def test_sampling_filters():
    logits = torch.tensor([[1.0, 3.0, 2.0, 0.0]])
    assert torch.isinf(_filter_logits(logits, 2, 1.0)).tolist() == [[True, False, False, True]]
    probs = logits.softmax(-1)[0]  # sorted: 0.665 (id 1), 0.245 (id 2), ...
    kept = ~torch.isinf(_filter_logits(logits, 0, 0.7))
    assert kept.tolist() == [[False, True, True, False]] and probs[1] < 0.7 < probs[1] + probs[2]
    model, config = _model(), tiny_config_dict()
    batch = _prompt(make_inputs(config, ROWS))
    greedy = generate(model, batch, GenerationConfig(max_new_tokens=4))
    assert generate(model, batch, GenerationConfig(max_new_tokens=4, do_sample=True, top_k=1, seed=1)) == greedy
    hot = GenerationConfig(max_new_tokens=4, do_sample=True, temperature=50.0, seed=3)
    assert generate(model, batch, hot) == generate(model, batch, hot)  # seeded
    assert generate(model, batch, hot) != greedy

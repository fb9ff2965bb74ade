"""InternVL3 generation through mm_core.generation: the KV cache (positions continued from it,
left padding as segments) gives token for token what transformers' generate gives."""

from __future__ import annotations

import pytest
import torch

from mm_core.generation import GenerationConfig, generate
from mm_core.nn.pretrained import load_pretrained
from mm_internvl.tiny import make_inputs, save_tiny_model, tiny_config_dict

ROWS = [[("text", 3), ("image", 2), ("text", 2)], [("text", 6)], [("text", 2), ("image", 1), ("text", 5)]]


def _left_padded(config: dict) -> dict:
    """The rows of ``ROWS`` (tiles in row order), left-padded into one prompt batch."""
    rows = [make_inputs(config, [row], seed=i) for i, row in enumerate(ROWS)]
    width = max(r["input_ids"].shape[1] for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        n = r["input_ids"].shape[1]
        ids[i, width - n:], mask[i, width - n:] = r["input_ids"][0], 1
    pixels = torch.cat([r["pixel_values"] for r in rows if "pixel_values" in r])
    return {"input_ids": ids, "attention_mask": mask, "pixel_values": pixels}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from transformers import InternVLForConditionalGeneration

    torch.set_num_threads(1)
    hf_dir = save_tiny_model(tmp_path_factory.mktemp("internvl"))
    hf = InternVLForConditionalGeneration.from_pretrained(hf_dir, dtype=torch.float32).eval()
    ours = load_pretrained(hf_dir, device="cpu").eval()
    with torch.no_grad():  # larger logits, so greedy choices are not near-ties between implementations
        hf.lm_head.weight.mul_(20)
        ours.text_decoder.output_layer.weight.mul_(20)
    return hf, ours


def test_kv_cache_greedy_equals_transformers_generate(models):
    hf, ours = models
    batch = _left_padded(tiny_config_dict())
    assert (batch["attention_mask"] == 0).any()  # really left-padded
    new = 8
    with torch.no_grad():
        ref = hf.generate(**batch, max_new_tokens=new, do_sample=False, min_new_tokens=new,
                          pad_token_id=0)[:, batch["input_ids"].shape[1]:]
    got = generate(ours, batch, GenerationConfig(max_new_tokens=new))
    assert got == ref.tolist()


def test_decoding_with_the_cache_equals_rerunning_the_whole_sequence(models):
    _, ours = models
    config = tiny_config_dict()
    prompt = make_inputs(config, [ROWS[0]], seed=3)
    prompt = {k: v for k, v in prompt.items() if k != "labels"}
    tokens = generate(ours, prompt, GenerationConfig(max_new_tokens=5))[0]
    ids = prompt["input_ids"]
    for tok in tokens:
        with torch.no_grad():
            logits = ours(**{**prompt, "input_ids": ids, "attention_mask": torch.ones_like(ids)})
        assert int(logits[0, -1].argmax()) == tok
        ids = torch.cat([ids, torch.tensor([[tok]])], 1)

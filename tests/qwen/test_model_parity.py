"""Our Qwen2.5-VL against transformers' on tiny random checkpoints: same weights (loaded from the
transformers-saved directory through the converter), fp32 logits within 1e-4, loss within 1e-5."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mm_core.nn.pretrained import load_pretrained as load_model
from mm_qwen.tiny import make_inputs, save_tiny_model, tiny_config_dict

CASES = {
    "text_only": [[("text", 11)], [("text", 6)]],
    "one_image": [[("text", 4), ("image", (1, 8, 12)), ("text", 5)]],
    "two_images_of_different_sizes": [[("text", 3), ("image", (1, 8, 8)), ("text", 2), ("image", (1, 10, 6)),
                                       ("text", 4)]],
    "one_video": [[("text", 3), ("video", (4, 8, 6), 1.5), ("text", 4)]],
    "left_padded_mixed_batch": [[("text", 2), ("image", (1, 6, 6)), ("text", 3)],
                                [("text", 5), ("video", (2, 4, 8), 0.5), ("text", 1), ("image", (1, 4, 4))]],
}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Lazily built (transformers model, our model, config dict, tied) per kind."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    torch.set_num_threads(1)
    cache = {}

    def get(kind: str):
        if kind not in cache:
            tied = kind == "tied"
            # GQA (4 q / 2 kv heads), window attention with a full-attention block (index 1 of 4)
            hf_dir = save_tiny_model(tmp_path_factory.mktemp(kind), tied=tied, seed=1 if tied else 0)
            hf = Qwen2_5_VLForConditionalGeneration.from_pretrained(hf_dir, dtype=torch.float32).eval()
            cache[kind] = (hf, load_model(hf_dir, device="cpu").eval(), tiny_config_dict(tied=tied), tied)
        return cache[kind]

    return get


@pytest.fixture(params=["untied", "tied"])
def pair(request, checkpoints):
    return checkpoints(request.param)


def _loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100)


# untied text, one image, two images and video run in the conformance suite (test_conformance.py)
PARITY = [("untied", "left_padded_mixed_batch"), ("tied", "text_only"), ("tied", "one_image")]


@pytest.mark.parametrize("kind,case", PARITY)
def test_logits_and_loss_match_transformers(checkpoints, kind, case):
    hf, ours, config, _ = checkpoints(kind)
    batch = make_inputs(config, CASES[case], seed=len(case))
    with torch.no_grad():
        ref = hf(**batch)
        out = ours(**batch)
    valid = batch["attention_mask"].bool()
    assert out.shape == ref.logits.shape
    assert (out - ref.logits)[valid].abs().max().item() <= 1e-4
    assert abs(_loss(out, batch["labels"]).item() - ref.loss.item()) <= 1e-5


def test_tied_model_has_no_separate_output_layer(pair):
    _, ours, _, tied = pair
    names = set(ours.state_dict())
    assert ("text_decoder.output_layer.weight" in names) != tied
    assert ours.output_weight().shape == (ours.config.text.vocab_size, ours.config.text.hidden_size)

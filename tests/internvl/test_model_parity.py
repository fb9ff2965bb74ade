"""Our InternVL3 against transformers' on tiny random checkpoints, weights loaded from the
transformers-saved directory through InternVLConverter: fp32 logits within 1e-4."""

from __future__ import annotations

import pytest
import torch

from mm_core.nn.pretrained import load_pretrained as load_model
from mm_internvl.tiny import make_inputs, save_tiny_model, tiny_config_dict

CASES = {
    "text_only": [[("text", 9)], [("text", 5)]],
    "images_of_two_and_one_tiles": [[("text", 3), ("image", 2), ("text", 4)], [("text", 2), ("image", 1), ("text", 8)]],
}
# the untied kind runs in the conformance suite (test_conformance.py)
KINDS = {"tied": {"tied": True}, "qk_norm_rms_6b_style": {"qk_norm": True}}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    from transformers import InternVLForConditionalGeneration

    torch.set_num_threads(1)
    cache = {}

    def get(kind):
        if kind not in cache:
            d = save_tiny_model(tmp_path_factory.mktemp(kind), **KINDS[kind])
            hf = InternVLForConditionalGeneration.from_pretrained(d, dtype=torch.float32).eval()
            cache[kind] = (hf, load_model(d, device="cpu").eval(), tiny_config_dict(**KINDS[kind]))
        return cache[kind]

    return get


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("case", list(CASES))
def test_logits_match_transformers(checkpoints, kind, case):
    hf, ours, config = checkpoints(kind)
    batch = make_inputs(config, CASES[case], seed=len(case))
    with torch.no_grad():
        ref = hf(**batch).logits
        out = ours(**batch)
    valid = batch["attention_mask"].bool()
    assert out.shape == ref.shape
    assert (out - ref)[valid].abs().max().item() <= 1e-4


def test_tied_model_has_no_separate_output_layer(checkpoints):
    for kind, tied in (("qk_norm_rms_6b_style", False), ("tied", True)):
        _, ours, _, = checkpoints(kind)
        assert ("text_decoder.output_layer.weight" in ours.state_dict()) != tied

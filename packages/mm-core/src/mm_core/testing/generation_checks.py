"""Greedy generation with mm's KV cache against transformers' ``generate``, token for token."""

from __future__ import annotations

from typing import Any

import pytest
import torch

NEW_TOKENS = 6
ROW_KEYS = ("input_ids", "attention_mask", "labels", "mm_token_type_ids", "token_type_ids")


def left_padded(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The batch with each row's real tokens moved to the right end (generation prompts)."""
    mask = batch["attention_mask"].bool()
    # a stable sort of "is real" puts padding first and keeps each row's token order
    order = torch.sort(mask.int(), dim=1, stable=True).indices
    out = dict(batch)
    for key in ROW_KEYS:
        if key in batch and batch[key].shape == mask.shape:
            out[key] = torch.gather(batch[key], 1, order)
    return out


def _eos_ids(hf_model: torch.nn.Module) -> list[int]:
    eos = hf_model.generation_config.eos_token_id
    return [] if eos is None else [int(eos)] if isinstance(eos, int) else [int(e) for e in eos]


class GenerationChecks:
    """Mixed into FamilyConformance."""

    @pytest.mark.parametrize("case", ["text", "image"])
    def test_greedy_generation_matches_transformers(self, case: str, hf_model: torch.nn.Module,
                                                    model: torch.nn.Module, hf_config: dict[str, Any]) -> None:
        """Left-padded prompts, greedy: our cached decoding gives transformers' tokens (stop at eos)."""
        from mm_core.generation import GenerationConfig, generate

        self.require("generation")
        self.require_case(case)
        batch = left_padded(self.make_batch(hf_config, case, seed=11))
        prompt = {k: v for k, v in batch.items() if k != "labels"}
        eos = _eos_ids(hf_model)
        pad = hf_model.generation_config.pad_token_id
        pad = int(pad if pad is not None else (eos[0] if eos else 0))
        ours = generate(model, prompt, GenerationConfig(max_new_tokens=NEW_TOKENS, stop_token_ids=eos,
                                                        pad_token_id=pad))
        with torch.no_grad():
            seqs = hf_model.generate(**prompt, max_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=pad)
        assert max(len(row) for row in ours) > 1, "every row stopped at its first token: the cache was never used"
        width = prompt["input_ids"].shape[1]
        for row, got in enumerate(ours):
            want = seqs[row, width:].tolist()
            stop = next((i for i, t in enumerate(want) if t in eos), None)
            want = want[: stop + 1] if stop is not None else want
            assert got == want, f"{case} row {row}: ours {got}, transformers {want}"

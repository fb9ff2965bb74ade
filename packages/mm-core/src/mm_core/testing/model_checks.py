"""Checks of the model itself: building, parity with transformers, pipeline stages."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from mm_core.specs import ModelSpec
from mm_core.testing.layouts import num_stages, pipeline_layouts

PARITY_ATOL = 1e-4  # fp32 logits against the transformers class
STAGE_ATOL = 1e-6  # chained stages against the whole model: the same ops in the same order


def _floats(model: torch.nn.Module) -> list[torch.Tensor]:
    return [t for t in model.state_dict().values() if t.is_floating_point()]


class ModelChecks:
    """Mixed into FamilyConformance."""

    def test_build_on_meta_and_on_cpu(self, spec: ModelSpec, hf_config: dict[str, Any]) -> None:
        """The builder allocates nothing on meta (loading never holds the model twice) and gives
        a working model with finite weights on the CPU."""
        meta = spec.builder(hf_config, device="meta")
        assert all(t.device.type == "meta" for t in meta.state_dict().values())
        torch.manual_seed(0)
        cpu = spec.builder(hf_config, device="cpu")
        assert set(cpu.state_dict()) == set(meta.state_dict())
        assert all(t.device.type == "cpu" and bool(torch.isfinite(t).all()) for t in _floats(cpu))
        batch = self.make_batch(hf_config, "text")
        with torch.no_grad():
            logits = cpu.eval()(**batch)
        vocab = cpu.output_weight().shape[0]
        assert logits.shape == (*batch["input_ids"].shape, vocab)

    @pytest.mark.parametrize("case", ["text", "image", "two_images", "video"])
    def test_logits_match_transformers(self, case: str, hf_model: torch.nn.Module, model: torch.nn.Module,
                                       hf_config: dict[str, Any]) -> None:
        """Same weights (read from the transformers-saved dir through the converter), fp32 logits
        within 1e-4 on every real token."""
        self.require_case(case)
        batch = self.make_batch(hf_config, case, seed=len(case))
        with torch.no_grad():
            ref = hf_model(**batch).logits
            out = model(**batch)
        assert out.shape == ref.shape
        valid = batch["attention_mask"].bool()
        diff = (out - ref)[valid].abs().max().item()
        assert diff <= PARITY_ATOL, f"{case}: max |logits - transformers| = {diff:.3g} > {PARITY_ATOL}"

    def test_hidden_times_output_weight_is_the_logits(self, model: torch.nn.Module, hf_config: dict[str, Any]
                                                      ) -> None:
        """The engine's chunked loss and generation use ``return_hidden`` + ``output_weight()``."""
        batch = self.make_batch(hf_config, "image" if "image" in self.capabilities else "text")
        with torch.no_grad():
            hidden = model(**batch, return_hidden=True)
            torch.testing.assert_close(hidden @ model.output_weight().t(), model(**batch))

    def test_dummy_vision_runs_the_encoder_and_adds_exactly_zero(self, model: torch.nn.Module,
                                                                 hf_config: dict[str, Any]) -> None:
        """A text-only micro-batch on one data-parallel rank still runs the vision encoder (every
        rank must run the same collectives) and must contribute nothing, in value and in gradient."""
        self.require("image")
        text = self.make_batch(hf_config, "text")
        image = self.make_batch(hf_config, "image", seed=3)
        media = {k: v for k, v in image.items() if k not in text}
        with torch.no_grad():
            ref = model(**text)
        out = model(**text, **media, dummy_vision=torch.tensor(True))
        assert torch.equal(out.detach(), ref)
        model.zero_grad()
        out.sum().backward()
        vision = [(n, p.grad) for n, p in model.named_parameters() if n.startswith("image_encoder.")]
        try:
            assert vision and all(g is not None for _, g in vision), "the encoder took no part in the graph"
            assert all(torch.count_nonzero(g) == 0 for _, g in vision), "dummy vision changed the gradients"
        finally:
            model.zero_grad(set_to_none=True)

    @pytest.mark.parametrize("layout_name", ["pp2", "virtual_chunks"])
    def test_pipeline_stages_equal_the_whole_model(self, layout_name: str, hf_dir: Path, model: torch.nn.Module,
                                                   depths: tuple[int, int], hf_config: dict[str, Any]) -> None:
        """Each stage loaded on its own, run in order with the stage calling convention
        (``stage(prev_output, **batch)``, tensors only), gives the whole model's logits."""
        from mm_core.nn.pretrained import load_pretrained

        self.require("pp")
        vit, llm = pipeline_layouts(*depths)[layout_name]
        stages = [load_pretrained(hf_dir, vit_pp_layers=vit, llm_pp_layers=llm, pp_rank=s, dtype=torch.float32).eval()
                  for s in range(num_stages((vit, llm)))]
        batch = self.make_batch(hf_config, "image" if "image" in self.capabilities else "text", seed=5)
        with torch.no_grad():
            out = stages[0](**batch)
            for stage in stages[1:]:
                assert isinstance(out, torch.Tensor), "stages must exchange one tensor"
                out = stage(out, **batch)
            ref = model(**batch)
        torch.testing.assert_close(out, ref, atol=STAGE_ATOL, rtol=STAGE_ATOL)

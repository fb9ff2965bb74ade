"""VisualGLM-6B passes the family conformance suite (mm_core.testing), with what it lacks flagged."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from mm_core.testing import FamilyConformance

ROWS = {  # (images, question tokens, answer tokens) per row
    "text": [(0, 6, 4), (0, 3, 2)],
    "image": [(1, 4, 3)],
    "two_images": [(2, 3, 2)],
}


class TestVisualGLM(FamilyConformance):
    family = "visualglm"
    transformers_class = None
    capabilities = {"image", "pp", "tp"}
    capability_notes = {
        "video": "VisualGLM-6B reads single images",
        "sequence_parallel": "the ChatGLM decoder has no sequence-parallel regions yet",
        "cp": "context parallel would have to split ChatGLM's prefix-LM mask and 2-D positions; not done",
        "generation": "transformers has no VisualGLM class to compare generate() with; tests/visualglm test the cache",
        "formatter": "there is no HF processor to compare with; tests/visualglm test the formatter's layout",
    }

    def tiny_hf_dir(self, path: Path) -> Path:
        from mm_visualglm.tiny import save_tiny_model

        return save_tiny_model(path, vision_depth=2, text_layers=2, qformer_layers=2)

    def make_batch(self, hf_config: dict[str, Any], case: str, seed: int = 0) -> dict[str, torch.Tensor]:
        from mm_visualglm.tiny import make_inputs

        return make_inputs(hf_config, ROWS[case], seed=seed)

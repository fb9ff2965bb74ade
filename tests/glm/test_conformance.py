"""GLM-4.1V passes the family conformance suite (mm_core.testing)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from mm_core.testing import FamilyConformance

ROWS = {  # ("image", (h, w)) patch grid; ("video", (t, h, w), seconds between frame groups)
    "text": [[("text", 11)], [("text", 6)]],
    "image": [[("text", 4), ("image", (8, 12)), ("text", 5)]],  # 8x12 patches: the 6x6 table is resampled
    "two_images": [[("text", 3), ("image", (8, 8)), ("text", 2), ("image", (10, 6)), ("text", 4)]],
    "video": [[("text", 3), ("video", (2, 8, 6), 2), ("text", 4)]],
}


class TestGlm4v(FamilyConformance):
    family = "glm4v"
    transformers_class = "Glm4vForConditionalGeneration"
    capabilities = {"image", "video", "tp", "sequence_parallel", "pp", "cp", "generation", "formatter"}

    def tiny_hf_dir(self, path: Path) -> Path:
        from mm_glm.tiny import save_tiny_model

        # 2 ViT + 2 LLM layers; GQA 4 q / 2 kv heads (tp 2 holds one group each), 2 ViT heads
        return save_tiny_model(path, vision_depth=2, text_layers=2)

    def make_batch(self, hf_config: dict[str, Any], case: str, seed: int = 0) -> dict[str, torch.Tensor]:
        from mm_glm.tiny import make_inputs

        return make_inputs(hf_config, ROWS[case], seed=seed)

    def formatter_dir(self, path: Path) -> Path:
        from mm_glm.testing_tokenizer import save_glm_processor

        return save_glm_processor(path)  # sized for the data config's default pixel limits

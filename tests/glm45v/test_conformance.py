"""GLM-4.5V (MoE) passes the family conformance suite (mm_core.testing)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from mm_core.testing import FamilyConformance

ROWS = {  # ("image", (h, w)) patch grid; ("video", (t, h, w), seconds between frame groups)
    "text": [[("text", 11)], [("text", 6)]],
    "image": [[("text", 4), ("image", (8, 12)), ("text", 5)]],
    "two_images": [[("text", 3), ("image", (8, 8)), ("text", 2), ("image", (10, 6)), ("text", 4)]],
    "video": [[("text", 3), ("video", (2, 8, 6), 2), ("text", 4)]],
}


class TestGlm45v(FamilyConformance):
    family = "glm4v_moe"
    transformers_class = "Glm4vMoeForConditionalGeneration"
    capabilities = {"image", "video", "tp", "pp", "generation"}
    capability_notes = {"sequence_parallel": "the routed experts take whole sequences",
                        "formatter": "GLM-4.1V's formatter (template glm4v), tested in tests/glm"}

    def tiny_hf_dir(self, path: Path) -> Path:
        from mm_glm.tiny_moe import save_tiny_model

        # 2 ViT + 3 LLM layers (layer 0 dense, 1-2 with 4 experts, top-2, one shared expert)
        return save_tiny_model(path, vision_depth=2, text_layers=3)

    def make_batch(self, hf_config: dict[str, Any], case: str, seed: int = 0) -> dict[str, torch.Tensor]:
        from mm_glm.tiny import make_inputs

        return make_inputs(hf_config, ROWS[case], seed=seed)

"""InternVL3 passes the family conformance suite (mm_core.testing)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from mm_core.testing import FamilyConformance

ROWS = {  # ("image", n): an image of n 56-px tiles
    "text": [[("text", 9)], [("text", 5)]],
    "image": [[("text", 3), ("image", 1), ("text", 4)]],
    "two_images": [[("text", 3), ("image", 2), ("text", 2), ("image", 1), ("text", 4)]],
    "video": [[("text", 2), ("image", 1), ("text", 1), ("image", 1), ("text", 1), ("image", 1), ("text", 3)]],  # 3 frames
}


class TestInternVL3(FamilyConformance):
    family = "internvl"
    transformers_class = "InternVLForConditionalGeneration"
    # tp: the engine derives the plan from the converter
    # video: each frame is one tile among the image tokens (the formatter writes FrameN: lines)
    capabilities = {"image", "video", "tp", "sequence_parallel", "pp", "cp", "generation", "formatter"}

    def tiny_hf_dir(self, path: Path) -> Path:
        from mm_internvl.tiny import save_tiny_model

        # 2 ViT + 2 LLM layers; an odd vocabulary (301 rows: 151/150 at tp 2, uneven like InternVL3's
        # 151674 at tp 4 or 8), so the tp checks cover an uneven split in mm-convert and the engine alike
        return save_tiny_model(path, vocab_size=301)

    def make_batch(self, hf_config: dict[str, Any], case: str, seed: int = 0) -> dict[str, torch.Tensor]:
        from mm_internvl.tiny import make_inputs

        return make_inputs(hf_config, ROWS[case], seed=seed)

    def formatter_dir(self, path: Path) -> Path:
        from mm_internvl.tokenizer import save_offline_processor

        self.tiny_hf_dir(path)  # config.json: tile size and tokens per tile
        return save_offline_processor(path, tile_size=56, image_seq_length=4)

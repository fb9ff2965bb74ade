"""Qwen2.5-VL passes the family conformance suite (mm_core.testing)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from mm_core.testing import FamilyConformance

ROWS = {
    "text": [[("text", 11)], [("text", 6)]],
    "image": [[("text", 4), ("image", (1, 8, 12)), ("text", 5)]],
    "two_images": [[("text", 3), ("image", (1, 8, 8)), ("text", 2), ("image", (1, 10, 6)), ("text", 4)]],
    "video": [[("text", 3), ("video", (4, 8, 6), 1.5), ("text", 4)]],
}


class TestQwen25VL(FamilyConformance):
    family = "qwen2_5_vl"
    transformers_class = "Qwen2_5_VLForConditionalGeneration"
    capabilities = {"image", "video", "tp", "sequence_parallel", "pp", "cp", "generation", "formatter"}

    def tiny_hf_dir(self, path: Path) -> Path:
        from mm_qwen.tiny import save_tiny_model

        # window attention in block 0, full attention in block 1; GQA 4 q / 2 kv heads
        return save_tiny_model(path, vision_depth=2, text_layers=2, fullatt_block_indexes=(1,))

    def make_batch(self, hf_config: dict[str, Any], case: str, seed: int = 0) -> dict[str, torch.Tensor]:
        from mm_qwen.tiny import make_inputs

        return make_inputs(hf_config, ROWS[case], seed=seed)

    def formatter_dir(self, path: Path) -> Path:
        from mm_core.data.config import PreprocessParameters
        from mm_qwen.tokenizer import save_offline_processor

        pre = PreprocessParameters()  # the data config's defaults, which the formatter passes on
        return save_offline_processor(path, image_min_pixels=pre.image_min_pixels,
                                      image_max_pixels=pre.image_max_pixels,
                                      video_min_pixels=pre.video_min_pixels, video_max_pixels=pre.video_max_pixels)

"""The example family passes mm's conformance suite: the same checks Qwen2.5-VL and InternVL3 run.

It has no transformers class, so the parity and generation checks skip with that reason."""

from __future__ import annotations

from typing import Any

import torch

from mm_core.testing import FamilyConformance


class TestExampleFamily(FamilyConformance):
    family = "example_vl"
    transformers_class = None
    capabilities = {"image", "tp", "pp"}
    capability_notes = {"generation": "the toy model keeps no KV cache", "formatter": "no formatter",
                        "video": "no video inputs"}
    # tiny_hf_dir: the default asks the registered spec's tiny_checkpoint hook

    def make_batch(self, hf_config: dict[str, Any], case: str, seed: int = 0) -> dict[str, torch.Tensor]:
        from mm_example_plugin.tiny import make_batch

        return make_batch(hf_config, case, seed)

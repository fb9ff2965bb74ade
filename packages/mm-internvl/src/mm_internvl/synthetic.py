"""One random InternVL image for the engine's synthetic data source (``ModelSpec.synthetic_image``).

InternVL sees an image as 448-px tiles (the config's ``vision_config.image_size``), each standing
for ``(side / patch / shuffle)^2`` context tokens after the pixel shuffle; a synthetic image is
one tile, whatever size was asked for, because the tile size is fixed by the model.
"""

from __future__ import annotations

from typing import Any

import torch

from mm_internvl.config import parse_config


def synthetic_image(hf_config: dict[str, Any], side: int, generator: torch.Generator
                    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(the image's placeholder ids, ``{"pixel_values": [1, C, H, W]}``) for one random tile."""
    cfg = parse_config(hf_config)
    v = cfg.vision
    h, w = v.image_size
    tokens = (h // v.patch_size // cfg.shuffle) * (w // v.patch_size // cfg.shuffle)
    pixels = torch.randn(1, v.num_channels, h, w, generator=generator)
    return torch.full((tokens,), cfg.image_token_id, dtype=torch.long), {"pixel_values": pixels}

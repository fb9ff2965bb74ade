"""Files for ``examples/visualglm/finetune_tiny_lora.yaml``: a tiny random VisualGLM with its own tiny
``ice_text.model``, and a few-shot dataset (``{"img", "prompt", "label"}``) of generated images.

    python -m mm_visualglm.tiny_example save_dir/visualglm_tiny
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

COLOURS = {"红色": (220, 30, 30), "绿色": (30, 200, 60), "蓝色": (30, 60, 220), "黄色": (230, 210, 40)}


def write_example(root: str | Path, samples: int = 8) -> Path:
    """``root/model`` (config.json, model.safetensors, ice_text.model) and ``root/data/dataset.json``."""
    import numpy as np
    from PIL import Image

    from mm_visualglm.tiny import save_tiny_model

    root = Path(root)
    save_tiny_model(root / "model", tokenizer=True, image_size=28)
    data = root / "data"
    (data / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    records = []
    names = list(COLOURS)
    for i in range(samples):
        name = names[i % len(names)]
        pixels = np.clip(np.array(COLOURS[name]) + rng.integers(-20, 20, (28, 28, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(data / "images" / f"{i}.png")
        records.append({"img": f"images/{i}.png", "prompt": "这张图片是什么颜色？", "label": f"这张图片是{name}的。"})
    (data / "dataset.json").write_text(json.dumps(records, ensure_ascii=False, indent=1))
    return root


if __name__ == "__main__":
    print(write_example(sys.argv[1] if len(sys.argv) > 1 else "save_dir/visualglm_tiny"))

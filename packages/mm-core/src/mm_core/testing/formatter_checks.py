"""The family's data formatter gives the token ids of the HF processor for the same conversation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mm_core.specs import ModelSpec

CONVERSATIONS = {  # user text with <image> placeholders, the assistant's reply, image sizes (h, w)
    "text": ("Hello, how are you?", "Fine, thanks!", []),
    "image": ("<image>\nWhat colour is the square?", "Red.", [(56, 84)]),
    "two_images": ("Compare <image> and <image>.", "The second is wider.", [(56, 56), (42, 98)]),
}


def _hf_content(text: str) -> list[dict[str, Any]]:
    """'<image>\\nWhat?' -> the processor's content list (image items and text items, in order)."""
    items: list[dict[str, Any]] = []
    for i, piece in enumerate(text.split("<image>")):
        if i:
            items.append({"type": "image"})
        if piece:
            items.append({"type": "text", "text": piece})
    return items


class FormatterChecks:
    """Mixed into FamilyConformance."""

    @pytest.fixture(scope="class")
    def formatter_files(self, spec: ModelSpec, tmp_path_factory: pytest.TempPathFactory) -> Path:
        self.require("formatter")
        return self.formatter_dir(tmp_path_factory.mktemp(f"{spec.name}_processor"))

    @pytest.mark.parametrize("case", list(CONVERSATIONS))
    def test_formatter_ids_equal_the_hf_processor(self, case: str, spec: ModelSpec, formatter_files: Path,
                                                  tmp_path: Path) -> None:
        import numpy as np
        from PIL import Image
        from transformers import AutoProcessor

        from mm_core.data.config import DataConfig
        from mm_core.data.records import Sample
        from mm_core.plugins import get_plugin_manager

        self.require_case(case)
        if spec.formatter is None:
            pytest.fail(f"{self.family} has the 'formatter' capability but its spec names no formatter")
        question, answer, sizes = CONVERSATIONS[case]
        rng = np.random.default_rng(0)
        paths = []
        for i, (h, w) in enumerate(sizes):
            paths.append(tmp_path / f"{i}.png")
            Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(paths[-1])
        cfg = DataConfig()
        cfg.preprocess_parameters.model_name_or_path = str(formatter_files)
        formatter = get_plugin_manager().formatter(spec.formatter).factory(cfg)
        messages = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        ours = formatter.encode(Sample(messages, [str(p) for p in paths], []))

        processor = AutoProcessor.from_pretrained(formatter_files)
        conv = [{"role": "user", "content": _hf_content(question)}, {"role": "assistant", "content": answer}]
        text = processor.apply_chat_template(conv, tokenize=False)
        kw = {"images": [Image.open(p) for p in paths]} if paths else {}
        ref = processor(text=[text], return_tensors="pt", **kw)
        # a template without an end-of-turn token (GLM) ends a training sample with ids of its own
        tail = list(getattr(formatter, "end_of_sample_ids", ()))
        assert list(ours["input_ids"]) == ref["input_ids"][0].tolist() + tail

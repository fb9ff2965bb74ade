"""The pipeline layouts the suite checks, derived from a tiny model's depths."""

from __future__ import annotations

from typing import Any

import pytest

Layout = tuple[list[Any], list[Any]]  # (vit_pp_layers, llm_pp_layers)


def pipeline_layouts(vit: int, llm: int) -> dict[str, Layout]:
    """``pp2``: the vision encoder and the first LLM layer on stage 0, the rest on stage 1;
    ``virtual_chunks``: 2 ranks x 2 chunks = 4 stages (vision 1 + rest, then LLM 1 + rest)."""
    if vit < 2 or llm < 2:
        pytest.fail(f"the tiny model has {vit} vision and {llm} LLM layers; the pipeline checks need at least 2 "
                    "of each (tiny_hf_dir)")
    return {"pp2": ([vit, 0], [1, llm - 1]),
            "virtual_chunks": ([[1, vit - 1], [0, 0]], [[0, 0], [1, llm - 1]])}


def num_stages(layout: Layout) -> int:
    vit = layout[0]
    return sum(len(c) for c in vit) if isinstance(vit[0], list) else len(vit)

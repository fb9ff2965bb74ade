"""Which modules a pipeline stage holds, from ``vit_pp_layers`` / ``llm_pp_layers``.

Absolute layer ranges per stage, so layouts whose vision encoder or LLM starts after stage 0
place every layer correctly; nested lists are virtual chunks (chunk v of rank p is stage
``v * pp + p``). The ViT embeddings go with its first non-empty stage, the projector with its
last; the word embedding with the LLM's first, the final norm and output layer with its last.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from mm_core.errors import ConfigError


@dataclass(frozen=True)
class StagePlan:
    stage: int
    num_stages: int
    vit_count: int
    llm_count: int
    embeddings: bool  # ViT class/patch/position embeddings
    projector: bool
    embedding: bool  # word embeddings
    head: bool  # final_layernorm + output_layer

    @property
    def has_vision(self) -> bool:
        return self.vit_count > 0 or self.embeddings or self.projector

    @property
    def has_text(self) -> bool:
        return self.llm_count > 0 or self.embedding or self.head


def _flat(layers: Sequence | None, total: int, name: str) -> list[int] | None:
    if layers is None:
        return None
    flat: list[int] = []
    for item in layers:
        flat.extend(int(x) for x in item) if isinstance(item, (list, tuple)) else flat.append(int(item))
    if any(x < 0 for x in flat):
        raise ConfigError(f"{name} {list(layers)} has a negative layer count")
    if sum(flat) != total:
        raise ConfigError(f"{name} {list(layers)} sums to {sum(flat)} but the model has {total} layers")
    return flat


def stage_plan(vit_depth: int, llm_depth: int, vit_pp_layers: Sequence | None, llm_pp_layers: Sequence | None,
               stage: int) -> StagePlan:
    """The modules of flattened pipeline stage ``stage`` (validated layout)."""
    vit = _flat(vit_pp_layers, vit_depth, "vit_pp_layers")
    llm = _flat(llm_pp_layers, llm_depth, "llm_pp_layers")
    if vit is None:
        vit = [vit_depth] + [0] * (len(llm) - 1 if llm else 0)
    if llm is None:
        llm = [0] * (len(vit) - 1) + [llm_depth]
    if len(vit) != len(llm):
        raise ConfigError(f"vit_pp_layers has {len(vit)} stages but llm_pp_layers has {len(llm)}; "
                          f"give one count per stage")
    n = len(vit)
    if not 0 <= stage < n:
        raise ConfigError(f"pipeline stage {stage} is out of range for a {n}-stage layout")
    vit_on = [i for i, c in enumerate(vit) if c] or [0]
    llm_on = [i for i, c in enumerate(llm) if c] or [n - 1]
    if llm_on[0] < vit_on[-1]:
        raise ConfigError(f"invalid pipeline layout vit_pp_layers={vit} llm_pp_layers={llm}: stage {llm_on[0]} holds "
                          f"LLM layers but vision layers remain on stage {vit_on[-1]}; the vision encoder must "
                          f"finish first")
    return StagePlan(stage=stage, num_stages=n, vit_count=vit[stage], llm_count=llm[stage],
                     embeddings=stage == vit_on[0], projector=stage == vit_on[-1],
                     embedding=stage == llm_on[0], head=stage == llm_on[-1])

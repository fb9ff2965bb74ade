"""Which modules a pipeline stage holds, from ``vit_pp_layers`` / ``llm_pp_layers``.

Absolute layer ranges per stage (never offsets relative to stage 0), so layouts whose vision
encoder or LLM starts after stage 0 place every layer correctly. Nested lists are virtual
pipeline chunks: chunk v of pp rank p is the flattened stage ``v * pp + p``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from mm_core.errors import ConfigError


@dataclass(frozen=True)
class StagePlan:
    stage: int
    num_stages: int
    vit_first: int  # absolute index of this stage's first vision block
    vit_count: int
    llm_first: int
    llm_count: int
    patch_embed: bool
    projector: bool
    embedding: bool
    head: bool  # final_layernorm + output_layer

    @property
    def has_vision(self) -> bool:
        return self.vit_count > 0 or self.patch_embed or self.projector

    @property
    def has_text(self) -> bool:
        return self.llm_count > 0 or self.embedding or self.head

    @property
    def vision_done_before(self) -> bool:
        """The vision encoder (with projector) ran entirely on earlier stages."""
        return not self.has_vision and self.stage > 0


def flatten_layers(layers: Sequence | None, total: int, name: str) -> list[int]:
    """``[a, b]`` or ``[[a, b], [c, d]]`` (virtual chunks) -> per flattened stage counts."""
    if layers is None:
        return [total]
    flat: list[int] = []
    for item in layers:
        if isinstance(item, (list, tuple)):
            flat.extend(int(x) for x in item)
        else:
            flat.append(int(item))
    if any(x < 0 for x in flat):
        raise ConfigError(f"{name} {list(layers)} has a negative layer count")
    if sum(flat) != total:
        raise ConfigError(f"{name} {list(layers)} sums to {sum(flat)} but the model has {total} layers")
    return flat


def stage_plan(vit_depth: int, llm_depth: int, vit_pp_layers: Sequence | None, llm_pp_layers: Sequence | None,
               stage: int) -> StagePlan:
    """The modules of flattened pipeline stage ``stage`` (validated layout)."""
    vit = flatten_layers(vit_pp_layers, vit_depth, "vit_pp_layers")
    llm = flatten_layers(llm_pp_layers, llm_depth, "llm_pp_layers")
    if vit_pp_layers is None and llm_pp_layers is not None:
        vit = [vit_depth] + [0] * (len(llm) - 1)
    if llm_pp_layers is None and vit_pp_layers is not None:
        llm = [0] * (len(vit) - 1) + [llm_depth]
    if len(vit) != len(llm):
        raise ConfigError(f"vit_pp_layers has {len(vit)} stages but llm_pp_layers has {len(llm)}; give one count per stage")
    n = len(vit)
    if not 0 <= stage < n:
        raise ConfigError(f"pipeline stage {stage} is out of range for a {n}-stage layout")
    vit_nonempty = [i for i, c in enumerate(vit) if c] or [0]
    llm_nonempty = [i for i, c in enumerate(llm) if c] or [n - 1]
    last_vit, first_llm = vit_nonempty[-1], llm_nonempty[0]
    if first_llm < last_vit:
        raise ConfigError(
            f"invalid pipeline layout vit_pp_layers={vit} llm_pp_layers={llm}: stage {first_llm} holds LLM layers "
            f"but vision layers remain on stage {last_vit}; the vision encoder must finish first"
        )
    return StagePlan(
        stage=stage, num_stages=n,
        vit_first=sum(vit[:stage]), vit_count=vit[stage],
        llm_first=sum(llm[:stage]), llm_count=llm[stage],
        patch_embed=stage == vit_nonempty[0], projector=stage == last_vit,
        embedding=stage == first_llm, head=stage == llm_nonempty[-1],
    )

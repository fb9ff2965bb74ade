"""Parallel layout: tp size and the pipeline placement of each module's layers.

The one home of stage placement: the engine, model builders (``StagePlan``), weight loading and
mm-convert all ask a :class:`Placement`.

``vit_pp_layers`` / ``llm_pp_layers`` give one layer count per stage; nested lists are virtual
pipeline chunks (chunk v of pp rank p is the flattened stage ``v * pp + p``). Placement uses
absolute stage ranges, so a module that starts after stage 0 lands where it should. A module's
"first" tensors (patch embed, word embedding) go to its first non-empty stage, its "last" tensors
(projector, final norm, output layer) to its last non-empty stage.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mm_core.errors import ConfigError

LAYOUT_FILE = "mm_layout.json"
_MODULE_WORDS = {"vit": "vision encoder", "llm": "LLM"}


def _as_list(x: Any) -> Any:
    if isinstance(x, str):  # "[1,2]" from a yaml or a shell
        x = json.loads(x)
    return [_as_list(y) for y in x] if isinstance(x, (list, tuple)) else int(x)


@dataclass
class Layout:
    """What an mm directory holds: tp/pp sizes and the per-module layer lists (as given)."""

    tp_size: int = 1
    pp_size: int = 1
    vpp_size: int = 1
    vit_pp_layers: list[Any] | None = None
    llm_pp_layers: list[Any] | None = None
    converter: str | None = None
    hf_key_style: str | None = None  # how the source HF files named keys ("old" / "new")
    extra: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> str:
        return "{\n" + ",\n".join(f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in asdict(self).items()) + "\n}"

    @classmethod
    def from_json(cls, path: Path) -> Layout:
        data = json.loads(path.read_text())
        known = {k: data.pop(k) for k in list(data) if k in cls.__dataclass_fields__}
        lay = cls(**known)
        lay.extra.update(data)
        return lay

    def layers(self, module: str) -> list[Any] | None:
        return {"vit": self.vit_pp_layers, "llm": self.llm_pp_layers}.get(module, self.extra.get(f"{module}_pp_layers"))


@dataclass(frozen=True)
class StageRange:
    """The layers ``[first, first + count)`` of one module on one flattened stage."""

    first: int
    count: int


@dataclass(frozen=True)
class StagePlan:
    """The modules of one flattened pipeline stage of a vision-language model."""

    stage: int
    num_stages: int
    vit_first: int  # absolute index of this stage's first vision layer
    vit_count: int
    llm_first: int
    llm_count: int
    patch_embed: bool  # the vision embeddings (first vision stage)
    projector: bool  # the vision projector (last vision stage)
    embedding: bool  # the word embedding (first LLM stage)
    head: bool  # final norm + output layer (last LLM stage)

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


def stage_plan(vit_depth: int, llm_depth: int, vit_pp_layers: Sequence | None, llm_pp_layers: Sequence | None,
               stage: int) -> StagePlan:
    """The modules of flattened stage ``stage`` of a validated layout (the model builders' entry)."""
    placement = Placement({"vit": vit_depth, "llm": llm_depth}, {"vit": vit_pp_layers, "llm": llm_pp_layers},
                          field="")
    return placement.stage_plan(stage)


class Placement:
    """Per-module layer ranges on every flattened stage, validated against the model's depths."""

    def __init__(self, modules: Mapping[str, int], layers: Mapping[str, Sequence | None], tp_size: int = 1,
                 field: str = "parallel_config."):
        """``modules``: module name -> layer count, in pipeline order (vision first).
        ``layers``: module name -> per-stage counts (flat or nested), or None.
        ``field``: the config prefix errors name (``parallel_config.`` in mm-convert, ``model.`` in the engine)."""
        if int(tp_size) < 1:
            raise ConfigError(f"{field}tp_size must be >= 1, got {tp_size}")
        self.field = field
        self.tp_size = int(tp_size)
        self.modules = dict(modules)
        given = {m: (_as_list(v) if v is not None else None) for m, v in layers.items() if m in self.modules}
        unknown = set(layers) - set(self.modules)
        if unknown:
            raise ConfigError(f"layer lists given for unknown module(s) {sorted(unknown)}; known: {list(self.modules)}")
        shapes = {m: self._shape(m, v) for m, v in given.items() if v is not None}
        nesting = {m: isinstance(v[0], list) for m, v in given.items() if v}
        if len(set(shapes.values())) > 1 or len(set(nesting.values())) > 1:
            desc = ", ".join(f"{m}_pp_layers has {p} stage(s)" + (f" x {v} virtual chunk(s)" if nesting[m] else "")
                             for m, (v, p) in shapes.items())
            raise ConfigError(f"the layer lists disagree on the pipeline shape: {desc}; give one count per "
                              f"stage in each, nested the same way")
        self.vpp, self.pp = next(iter(shapes.values())) if shapes else (1, 1)
        self.nested = any(nesting.values())
        n = self.vpp * self.pp
        names = list(self.modules)
        self.counts: dict[str, list[int]] = {}
        for i, m in enumerate(names):
            v = given.get(m)
            if v is None:  # default: the first module on stage 0, the others on the last stage
                flat = [0] * n
                flat[0 if i == 0 else n - 1] = self.modules[m]
            else:
                flat = [c for chunk in v for c in chunk] if self.nested else list(v)
            if any(c < 0 for c in flat):
                raise ConfigError(f"{self.field}{m}_pp_layers {v} has a negative count")
            if sum(flat) != self.modules[m]:
                raise ConfigError(f"{self.field}{m}_pp_layers {v} sums to {sum(flat)} but the model has "
                                  f"{self.modules[m]} {m} layers")
            self.counts[m] = flat
        for a, b in zip(names, names[1:]):  # the earlier module must finish before the next starts
            last_a = self.last_stage(a)
            first_b = self.first_stage(b)
            if self.modules[a] and self.modules[b] and first_b < last_a:
                what_a, what_b = _MODULE_WORDS.get(a, a), _MODULE_WORDS.get(b, b)
                raise ConfigError(
                    f"invalid pipeline layout {self.field}{a}_pp_layers={given.get(a)} {self.field}{b}_pp_layers="
                    f"{given.get(b)}: stage {first_b} holds {what_b} layers but {what_a} layers remain on stage "
                    f"{last_a}; the {what_a} must finish first")

    def _shape(self, m: str, v: list[Any]) -> tuple[int, int]:
        if not v:
            raise ConfigError(f"{self.field}{m}_pp_layers is empty; give one layer count per stage")
        if isinstance(v[0], list):
            if not all(isinstance(c, list) and len(c) == len(v[0]) for c in v):
                raise ConfigError(f"{self.field}{m}_pp_layers {v}: every virtual chunk needs one count per stage")
            return len(v), len(v[0])
        return 1, len(v)

    @property
    def num_stages(self) -> int:
        return self.vpp * self.pp

    def stage_of(self, pp_rank: int, chunk: int) -> int:
        return chunk * self.pp + pp_rank

    def rank_of(self, stage: int) -> tuple[int, int]:
        """flattened stage -> (pp rank, virtual chunk)."""
        return stage % self.pp, stage // self.pp

    def first_stage(self, m: str) -> int:
        nz = [s for s, c in enumerate(self.counts[m]) if c]
        return nz[0] if nz else (0 if list(self.modules).index(m) == 0 else self.num_stages - 1)

    def last_stage(self, m: str) -> int:
        nz = [s for s, c in enumerate(self.counts[m]) if c]
        return nz[-1] if nz else self.first_stage(m)

    def range(self, m: str, stage: int) -> StageRange:
        c = self.counts[m]
        return StageRange(sum(c[:stage]), c[stage])

    def place_layer(self, m: str, layer: int) -> tuple[int, int]:
        """Global layer -> (flattened stage, local index)."""
        start = 0
        for s, c in enumerate(self.counts[m]):
            if layer < start + c:
                return s, layer - start
            start += c
        raise ConfigError(f"{m} layer {layer} is beyond the model's {self.modules[m]} layers")

    def flat_counts(self, m: str) -> list[int]:
        """Per flattened stage layer counts of module ``m`` (stage ``v * pp + p``)."""
        return list(self.counts[m])

    def stage_plan(self, stage: int) -> StagePlan:
        """What flattened stage ``stage`` holds of a vision-language model (modules ``vit``, ``llm``)."""
        n = self.num_stages
        if not 0 <= stage < n:
            raise ConfigError(f"pipeline stage {stage} is out of range for a {n}-stage layout")
        vit, llm = self.range("vit", stage), self.range("llm", stage)
        return StagePlan(stage=stage, num_stages=n, vit_first=vit.first, vit_count=vit.count, llm_first=llm.first,
                         llm_count=llm.count, patch_embed=stage == self.first_stage("vit"),
                         projector=stage == self.last_stage("vit"), embedding=stage == self.first_stage("llm"),
                         head=stage == self.last_stage("llm"))

    def layout(self, **kw: Any) -> Layout:
        def shaped(m: str) -> list[Any]:
            flat = self.counts[m]
            if self.nested:
                return [flat[v * self.pp:(v + 1) * self.pp] for v in range(self.vpp)]
            return list(flat)

        names = list(self.modules)
        extra = {f"{m}_pp_layers": shaped(m) for m in names if m not in ("vit", "llm")}
        return Layout(tp_size=self.tp_size, pp_size=self.pp, vpp_size=self.vpp,
                      vit_pp_layers=shaped("vit") if "vit" in names else None,
                      llm_pp_layers=shaped("llm") if "llm" in names else None, extra=extra, **kw)

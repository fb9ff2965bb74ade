"""Stage-local <-> whole-model parameter names.

A pipeline stage numbers its layers from 0; checkpoints use the whole model's numbering so one
checkpoint loads into any layout. A name ``<module>...layers.<i>.<rest>`` under the vision
pipeline module is offset by the vision layers of the stages before it, one under the text
module by the LLM layers before it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from mm_core.layout import Placement

_LAYER = re.compile(r"^(.*?\.layers)\.(\d+)\.(.*)$")


class StageNames:
    """Renames between a stage's own parameter names and the whole model's."""

    def __init__(self, pipeline_modules: Sequence[str], placement: Placement, stage: int):
        vision, text = (tuple(pipeline_modules) + ("image_encoder", "text_decoder"))[:2]
        vit, llm = placement.range("vit", stage), placement.range("llm", stage)
        self.offsets = {vision: vit.first, text: llm.first}
        self.counts = {vision: vit.count, text: llm.count}

    def _module(self, name: str) -> str | None:
        for prefix in self.offsets:
            if name == prefix or name.startswith(prefix + "."):
                return prefix
        return None

    def to_global(self, name: str) -> str:
        m, prefix = _LAYER.match(name), self._module(name)
        if m is None or prefix is None:
            return name
        return f"{m.group(1)}.{int(m.group(2)) + self.offsets[prefix]}.{m.group(3)}"

    def to_local(self, name: str) -> str | None:
        """The stage's name for a whole-model name, or None when the layer is on another stage."""
        m, prefix = _LAYER.match(name), self._module(name)
        if m is None or prefix is None:
            return name
        i = int(m.group(2)) - self.offsets[prefix]
        if not 0 <= i < self.counts[prefix]:
            return None
        return f"{m.group(1)}.{i}.{m.group(3)}"

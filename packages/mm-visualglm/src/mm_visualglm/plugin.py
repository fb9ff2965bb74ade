"""mm-visualglm's hooks: thin on purpose, heavy modules are imported only when used."""

from __future__ import annotations

from collections.abc import Callable

from mm_core.family.lazy import lazy as _lazy
from mm_core.family.lazy import vision_language_spec
from mm_core.hookspecs import hookimpl
from mm_core.specs import ConverterSpec, FormatterSpec, ModelSpec


@hookimpl
def mm_register_models(register: Callable[[ModelSpec], None]) -> None:
    register(vision_language_spec("visualglm", "mm_visualglm", converter="VisualGLMConverter", formatter="visualglm",
                                  hf_architectures=("ChatGLMForConditionalGenerationWithImage",),
                                  processor=_lazy("mm_visualglm.processor", "VisualGLMProcessor"),
                                  synthetic_image=_lazy("mm_visualglm.tiny", "synthetic_image"),
                                  description="VisualGLM-6B (EVA ViT + BLIP-2 Q-Former + ChatGLM-6B)"))


@hookimpl
def mm_register_converters(register: Callable[[ConverterSpec], None]) -> None:
    register(ConverterSpec("VisualGLMConverter", _lazy("mm_visualglm.convert", "VisualGLMConverter"),
                           verbs=("hf_to_mm", "mm_to_hf", "resplit", "hf_to_dcp", "dcp_to_hf", "export_parts"),
                           description="VisualGLM-6B: SAT (.pt) or HF remote-code (.bin) <-> mm (tp/pp) <-> DCP"))


@hookimpl
def mm_register_formatters(register: Callable[[FormatterSpec], None]) -> None:
    register(FormatterSpec("visualglm", _lazy("mm_visualglm.formatter", "VisualGLMFormatter"),
                           description="VisualGLM-6B fine-tuning layout (<img> + 32 placeholders + </img>问：...\\n答："
                                       " [gMASK] <sop> reply <eop>; loss from <sop> on)"))

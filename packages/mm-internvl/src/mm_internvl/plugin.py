"""mm-internvl's hooks: thin on purpose. Each registration names objects in modules that are
imported only when used (building a model, converting)."""

from __future__ import annotations

from collections.abc import Callable

from mm_core.family.lazy import lazy as _lazy
from mm_core.family.lazy import vision_language_spec
from mm_core.hookspecs import hookimpl
from mm_core.specs import ConverterSpec, FormatterSpec, ModelSpec


@hookimpl
def mm_register_models(register: Callable[[ModelSpec], None]) -> None:
    register(vision_language_spec("internvl", "mm_internvl", converter="InternVLConverter", formatter="internvl2_5",
                                  hf_model_types=("internvl", "internvl_chat"),
                                  hf_architectures=("InternVLForConditionalGeneration", "InternVLChatModel"),
                                  synthetic_image=_lazy("mm_internvl.synthetic", "synthetic_image"),
                                  description="InternVL3 (InternViT + Qwen2.5): the '-hf' layout or the original "
                                              "remote-code one (read without running its code)"))


@hookimpl
def mm_register_converters(register: Callable[[ConverterSpec], None]) -> None:
    register(ConverterSpec("InternVLConverter", _lazy("mm_internvl.convert", "InternVLConverter"),
                           description="InternVL3 (-hf or remote-code layout): HF <-> mm (tp/pp, uneven heads and "
                                       "vocabulary) <-> DCP"))


@hookimpl
def mm_register_formatters(register: Callable[[FormatterSpec], None]) -> None:
    register(FormatterSpec("internvl2_5", _lazy("mm_internvl.formatter", "InternVLFormatter"),
                           description="InternVL2.5/3 chat template, dynamic tiling, video frames as tiles"))

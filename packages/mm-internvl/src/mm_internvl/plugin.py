"""mm-internvl's hooks: thin on purpose. Each registration names objects in modules that are
imported only when used (building a model, converting)."""

from __future__ import annotations

from collections.abc import Callable

from mm_core.family.lazy import lazy as _lazy
from mm_core.family.lazy import vision_language_spec
from mm_core.hookspecs import hookimpl
from mm_core.specs import ConverterSpec, ModelSpec


@hookimpl
def mm_register_models(register: Callable[[ModelSpec], None]) -> None:
    register(vision_language_spec("internvl", "mm_internvl", converter="InternVLConverter",
                                  hf_model_types=("internvl",), hf_architectures=("InternVLForConditionalGeneration",),
                                  description="InternVL3 (InternViT + Qwen2.5), the transformers '-hf' layout"))


@hookimpl
def mm_register_converters(register: Callable[[ConverterSpec], None]) -> None:
    register(ConverterSpec("InternVLConverter", _lazy("mm_internvl.convert", "InternVLConverter"),
                           description="InternVL3: HF <-> mm (tp/pp, uneven vocabulary split) <-> DCP"))

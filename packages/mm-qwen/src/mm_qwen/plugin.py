"""mm-qwen's hooks: thin on purpose. Each registration names objects in modules that are
imported only when used (building a model, converting, formatting data)."""

from __future__ import annotations

from collections.abc import Callable

from mm_core.family.lazy import lazy as _lazy
from mm_core.family.lazy import vision_language_spec
from mm_core.hookspecs import hookimpl
from mm_core.specs import ConverterSpec, FormatterSpec, ModelSpec


@hookimpl
def mm_register_models(register: Callable[[ModelSpec], None]) -> None:
    register(vision_language_spec("qwen2_5_vl", "mm_qwen", converter="Qwen2_5_VLConverter", formatter="qwen2vl",
                                  hf_model_types=("qwen2_5_vl",),
                                  hf_architectures=("Qwen2_5_VLForConditionalGeneration",),
                                  description="Qwen2.5-VL 3B/7B/32B/72B"))


@hookimpl
def mm_register_converters(register: Callable[[ConverterSpec], None]) -> None:
    register(ConverterSpec("Qwen2_5_VLConverter", _lazy("mm_qwen.convert", "Qwen2_5_VLConverter"),
                           description="Qwen2.5-VL: HF <-> mm (tp/pp) <-> DCP"))


@hookimpl
def mm_register_formatters(register: Callable[[FormatterSpec], None]) -> None:
    register(FormatterSpec("qwen2vl", _lazy("mm_qwen.formatter", "Qwen2VLFormatter"),
                           description="Qwen2.5-VL chat template and processor"))

"""mm-internvl's hooks: thin on purpose. Each registration names objects in modules that are
imported only when used (building a model, converting)."""

from __future__ import annotations

from collections.abc import Callable

from mm_core.family.lazy import lazy as _lazy
from mm_core.hookspecs import hookimpl
from mm_core.specs import ConverterSpec, ModelSpec


@hookimpl
def mm_register_models(register: Callable[[ModelSpec], None]) -> None:
    register(
        ModelSpec(
            name="internvl",
            builder=_lazy("mm_internvl.model", "build_model"),
            hf_model_types=("internvl",),
            hf_architectures=("InternVLForConditionalGeneration",),
            module_groups={
                "vision_encoder": ("image_encoder.encoder",),
                "vision_projector": ("image_encoder.projector",),
                "text_decoder": ("text_decoder",),
            },
            pipeline_modules=("image_encoder", "text_decoder"),
            converter="InternVLConverter",
            tiny_checkpoint=_lazy("mm_internvl.tiny", "save_tiny_model"),
            description="InternVL3 (InternViT + Qwen2.5), the transformers '-hf' layout",
        )
    )


@hookimpl
def mm_register_converters(register: Callable[[ConverterSpec], None]) -> None:
    register(ConverterSpec("InternVLConverter", _lazy("mm_internvl.convert", "InternVLConverter"),
                           description="InternVL3: HF <-> mm (tp/pp, uneven vocabulary split) <-> DCP"))

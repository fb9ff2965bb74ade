"""Hook implementations: keep this module cheap to import (no torch at import time).

``lazy("module", "attr")`` names an object that is imported on first use, so ``mm-run plugins``
stays fast and a plugin whose heavy code is broken is reported instead of breaking the others.
"""

from __future__ import annotations

from collections.abc import Callable

from mm_core import hookimpl
from mm_core.family.lazy import lazy
from mm_core.specs import ConverterSpec, LossSpec, ModelSpec


@hookimpl
def mm_register_models(register: Callable[[ModelSpec], None]) -> None:
    register(
        ModelSpec(
            name="example_vl",
            builder=lazy("mm_example_plugin.model", "build_model"),
            hf_model_types=("example_vl",),
            hf_architectures=("ExampleVLForConditionalGeneration",),
            module_groups={
                "vision_encoder": ("image_encoder.encoder",),
                "vision_projector": ("image_encoder.projector",),
                "text_decoder": ("text_decoder",),
            },
            pipeline_modules=("image_encoder", "text_decoder"),
            # no tp_plan: the engine derives tensor parallelism from the converter's rule table
            converter="ExampleConverter",
            tiny_checkpoint=lazy("mm_example_plugin.tiny", "save_tiny_model"),
            description="example vision-language family (the toy model of mm_core.testing)",
        )
    )


@hookimpl
def mm_register_converters(register: Callable[[ConverterSpec], None]) -> None:
    register(ConverterSpec("ExampleConverter", lazy("mm_example_plugin.convert", "ExampleConverter"),
                           description="example family: HF <-> mm (tp/pp) <-> DCP"))


@hookimpl
def mm_register_losses(register: Callable[[LossSpec], None]) -> None:
    register(
        LossSpec(
            name="log_length_loss",
            token_weights=lazy("mm_example_plugin.loss", "log_length_weights"),
            normalize="rank_mean",
            description="w = 1/log(1 + n_b): between per-token and per-sample averaging",
        )
    )

"""mm-glm's hooks: thin on purpose. Each registration names objects in modules that are imported
only when used (building a model, converting, formatting data, running an NPU kernel)."""

from __future__ import annotations

from collections.abc import Callable

from mm_core.family.lazy import lazy as _lazy
from mm_core.family.lazy import vision_language_spec
from mm_core.hookspecs import hookimpl
from mm_core.specs import ConverterSpec, FormatterSpec, KernelSpec, ModelSpec


@hookimpl
def mm_register_models(register: Callable[[ModelSpec], None]) -> None:
    register(vision_language_spec("glm4v", "mm_glm", converter="GlmConverter", formatter="glm4v",
                                  hf_model_types=("glm4v",), hf_architectures=("Glm4vForConditionalGeneration",),
                                  description="GLM-4.1V (9B, Base and Thinking)"))
    register(vision_language_spec("glm4v_moe", "mm_glm", converter="GlmConverter", formatter="glm4v",
                                  hf_model_types=("glm4v_moe",), hf_architectures=("Glm4vMoeForConditionalGeneration",),
                                  builder=_lazy("mm_glm.glm4v_moe", "build_model"),
                                  tiny_checkpoint=_lazy("mm_glm.tiny_moe", "save_tiny_model"),
                                  default_freeze=("vision_encoder", "vision_projector"),  # as the seed recipe
                                  checkpoint_sources=_lazy("mm_glm.reference_layout", "checkpoint_sources"),
                                  description="GLM-4.5V (106B-A12B MoE)"))


@hookimpl
def mm_register_converters(register: Callable[[ConverterSpec], None]) -> None:
    register(ConverterSpec("GlmConverter", _lazy("mm_glm.convert", "GlmConverter"),
                           description="GLM-4.1V and GLM-4.5V: HF <-> mm (tp/pp) <-> DCP"))
    register(ConverterSpec("ExpertMergeDcpConverter", _lazy("mm_glm.expert_merge", "ExpertMergeDcpConverter"),
                           verbs=("hf_to_dcp", "dcp_to_hf"),
                           description="GLM-4.5V: HF <-> DCP with merged experts (the reference system's layout)"))


@hookimpl
def mm_register_formatters(register: Callable[[FormatterSpec], None]) -> None:
    register(FormatterSpec("glm4v", _lazy("mm_glm.formatter", "Glm4vFormatter"),
                           description="GLM-4.1V chat template ([gMASK]<sop>, <|user|>, ...) and processor"))


@hookimpl
def mm_register_kernels(register: Callable[[KernelSpec], None]) -> None:
    """The interleaved partial rotary and GLM-4.5V's expert grouped GEMM on Ascend (npu only); torch_npu
    is imported only by the calls and by the availability check, which the registry runs only when an
    npu kernel is asked for."""
    from mm_core.kernels.npu import torch_npu_available
    from mm_glm.kernels_npu import rotary_interleaved

    register(KernelSpec("rotary_interleaved", "npu", "torch_npu", rotary_interleaved, priority=10,
                        is_available=torch_npu_available))
    from mm_glm.moe_kernels_npu import grouped_mm

    register(KernelSpec("grouped_mm", "npu", "torch_npu", grouped_mm, priority=10, is_available=torch_npu_available))

"""The plugin hooks of mm.

A plugin is any object (usually a module) with functions decorated by ``mm_core.hookimpl`` and
named like the hooks below. Installed packages are found through the entry-point group
``mm.plugins``; tests may register plugin objects in process.

Every hook here is a *registration* hook: it receives a ``register`` callback and calls it once
per thing it provides. Keep hook bodies cheap: import heavy code (torch modules, transformers)
inside the objects you register or their builders, not at plugin import time. Registering a key
that another plugin already registered is an error that names both plugins.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from mm_core.specs import ConverterSpec, FormatterSpec, KernelSpec, LossSpec, ModelSpec

PROJECT_NAME = "mm"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def mm_register_models(register: Callable[[ModelSpec], None]) -> None:
    """Register model families.

    Call ``register(ModelSpec(...))`` for each model. ``name`` is the key users type
    (``model: qwen2_5_vl``); ``hf_model_types`` and ``hf_architectures`` let core pick the spec
    from an HF ``config.json``. The spec carries the builder, the module groups used for
    freezing (``vision_encoder``, ``vision_projector``, ``text_decoder``), the pipeline modules, the
    converter (whose rule table the engine derives its tensor-parallel plan from; ``tp_plan`` only
    for a model without one) and its formatter (the data template's default).
    """


@hookspec
def mm_register_converters(register: Callable[[ConverterSpec], None]) -> None:
    """Register checkpoint converters.

    Call ``register(ConverterSpec(...))``; ``name`` is the first word after ``mm-convert``
    (e.g. ``Qwen2_5_VLConverter``) and ``factory`` returns the object whose methods are the verbs
    (``hf_to_mm``, ``mm_to_hf``, ``resplit``, ``hf_to_dcp``, ``dcp_to_hf``).
    """


@hookspec
def mm_register_formatters(register: Callable[[FormatterSpec], None]) -> None:
    """Register data formatters (chat template + processor glue).

    Call ``register(FormatterSpec(...))``; ``name`` is the data config's ``template`` value
    (e.g. ``qwen2vl``). ``factory(data_config)`` returns an object that turns one record into token
    ids, labels and pixel tensors.
    """


@hookspec
def mm_register_losses(register: Callable[[LossSpec], None]) -> None:
    """Register loss types.

    Call ``register(LossSpec(name, token_weights, normalize))``; ``name`` is the training config's
    ``loss_type``, ``token_weights(valid, sample_ids)`` gives each token's weight and ``normalize``
    (one of ``mm_core.specs.NORMALIZE_MODES``, checked at registration) how the engine divides.
    """


@hookspec
def mm_register_kernels(register: Callable[[KernelSpec], None]) -> None:
    """Register kernel implementations.

    Call ``register(KernelSpec(op, device_type, name, fn, priority, is_available))``. At lookup the
    available implementation with the highest priority for (op, device type) wins, falling back to
    the plain-PyTorch reference (device type ``"any"``). Keep ``fn`` lazy for device-specific
    libraries (import ``torch_npu`` inside it, never at plugin import).
    """

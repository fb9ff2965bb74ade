"""What plugins register: one small dataclass per hook."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class ModelSpec:
    """A model family: how to recognise its HF config and build it (whole or one pipeline stage).

    ``tiny_checkpoint(path, seed=0, **family_options) -> path`` writes a tiny random HF directory
    (``config.json`` + safetensors) of the family, so the demo and the conformance suite get a
    model through the registry instead of importing a family package. Import it lazily.
    ``formatter`` names the model's data formatter: the data config's template defaults to it, and
    a template that is not it is refused (``mm_core.data.template``).
    ``synthetic_image(hf_config, side, generator) -> (placeholder_ids, media)`` makes one random
    image of about ``side`` pixels in the family's batch layout for the engine's synthetic data
    (``data.source synthetic``): the token ids that stand for it in the text, and the batch tensors
    (concatenated along dim 0 over a micro-batch's images). None: Qwen2-VL-style patch rows with
    ``image_grid_thw`` and the config's vision start/end tokens.
    ``processor(model_dir) -> processor``: for a family without an HF processor class (VisualGLM), an
    object with the HF processor members inference uses (``apply_chat_template``, ``__call__``,
    ``tokenizer``); ``mm_core.data.hf_processor.load_processor`` returns it instead of ``AutoProcessor``.
    ``default_freeze``: the module groups frozen when the config does not say (``model.freeze``
    overrides it, ``[]`` trains everything): what the reference recipe freezes (GLM-4.5V's vision
    encoder and projector).
    ``checkpoint_sources(model, stored) -> {mm name: mm_core.engine.foreign_checkpoint.StoredSource} | None``:
    where each whole-model weight lies in a DCP checkpoint written under another system's names
    (``stored``: its tensor names -> sizes), so ``output.load`` reads it into any layout; None when
    ``stored`` is not a layout the family knows. Import it lazily.
    """

    name: str
    builder: Callable[..., Any]
    hf_model_types: Sequence[str] = ()
    hf_architectures: Sequence[str] = ()
    module_groups: Mapping[str, Sequence[str]] = field(default_factory=dict)
    tp_plan: Callable[..., Any] | None = None
    pipeline_modules: Sequence[str] = ()
    converter: str | None = None
    formatter: str | None = None
    description: str = ""
    tiny_checkpoint: Callable[..., Path] | None = None
    synthetic_image: Callable[..., Any] | None = None
    processor: Callable[..., Any] | None = None
    default_freeze: Sequence[str] = ()
    checkpoint_sources: Callable[..., Any] | None = None

    @property
    def key(self) -> str:
        return self.name


@dataclass(frozen=True)
class ConverterSpec:
    """A checkpoint converter: ``factory()`` returns the object whose methods are the verbs."""

    name: str
    factory: Callable[[], Any]
    verbs: Sequence[str] = ("hf_to_mm", "mm_to_hf", "resplit", "hf_to_dcp", "dcp_to_hf")
    description: str = ""

    @property
    def key(self) -> str:
        return self.name


@dataclass(frozen=True)
class FormatterSpec:
    """A data formatter keyed by the data config's ``template`` name."""

    name: str
    factory: Callable[..., Any]
    description: str = ""

    @property
    def key(self) -> str:
        return self.name


NORMALIZE_MODES = ("none", "micro_batch", "rank_mean", "rank_mean_window")  # LossSpec.normalize


@dataclass(frozen=True)
class LossSpec:
    """A loss type keyed by the training config's ``loss_type``.

    A loss is ``sum(w * ce) / D`` over the micro-batch's tokens. ``token_weights(valid,
    sample_ids)`` gives ``w`` (``[B, T]``; ``sample_ids`` numbers packed samples, -1 = padding) and
    ``normalize`` says how the engine computes ``D`` from the weights:

    - ``"none"``: D = 1 (the weights already normalise);
    - ``"micro_batch"``: D = sum(w) of this micro-batch on this rank;
    - ``"rank_mean"``: D = mean over data-parallel ranks of each rank's sum(w);
    - ``"rank_mean_window"``: D = mean over ranks of sum(w) over the rank's whole
      gradient-accumulation window, divided by the number of accumulation steps.
    """

    name: str
    token_weights: Callable[..., Any]
    normalize: str = "micro_batch"
    description: str = ""

    @property
    def key(self) -> str:
        return self.name


def _always() -> bool:
    return True


@dataclass(frozen=True)
class KernelSpec:
    """One implementation of an op for one device type (``"any"`` = the portable reference)."""

    op: str
    device_type: str
    name: str
    fn: Callable[..., Any]
    priority: int = 0
    is_available: Callable[[], bool] = _always

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.op, self.device_type, self.name)

"""Hook implementations: keep this module cheap to import (no torch at import time)."""

from __future__ import annotations

from collections.abc import Callable

from mm_core import hookimpl
from mm_core.specs import LossSpec, ModelSpec


def _build_tiny_tagger(hf_config: dict | None = None, **kwargs):
    from mm_example_plugin.model import TinyTagger  # heavy import only when a model is built

    return TinyTagger(**(hf_config or {}))


def _log_length_weights(valid, sample_ids):
    from mm_example_plugin.loss import log_length_weights

    return log_length_weights(valid, sample_ids)


@hookimpl
def mm_register_models(register: Callable[[ModelSpec], None]) -> None:
    register(
        ModelSpec(
            name="tiny_tagger",
            builder=_build_tiny_tagger,
            hf_model_types=("tiny_tagger",),
            module_groups={"text_decoder": ("embed", "head")},
            description="a two-layer example model",
        )
    )


@hookimpl
def mm_register_losses(register: Callable[[LossSpec], None]) -> None:
    register(
        LossSpec(
            name="log_length_loss",
            token_weights=_log_length_weights,
            normalize="rank_mean",
            description="w = 1/log(1 + n_b): between per-token and per-sample averaging",
        )
    )

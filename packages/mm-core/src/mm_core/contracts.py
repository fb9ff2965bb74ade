"""What the engine, generation and the data pipeline rely on, as typed contracts.

A family's stage model and formatter are plain objects from a plugin; these Protocols say which
members core calls, so core asks once (``require``) instead of probing attributes at each use,
and a plugin author gets one error listing everything missing. ``mm_core.family.stage_model.StageModel``
implements :class:`StageModel`; a family that subclasses it has nothing left to add.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch

from mm_core.errors import ConfigError


@runtime_checkable
class StageModel(Protocol):
    """One pipeline stage (or the whole model) of a family.

    ``forward(*stage_input, cache=None, return_hidden=False, **batch)``: the previous stage's
    output positionally (none on the first stage), the batch as keywords; ``cache`` a
    :class:`~mm_core.nn.KVCache` for generation; the last stage returns logits, or final-normed
    hidden states with ``return_hidden=True`` for ``output_weight()``.
    """

    supports_sequence_parallel: ClassVar[bool]  # the tp plan may shard its activations over the sequence

    def forward(self, *stage_input: torch.Tensor, cache: Any = None, return_hidden: bool = False,
                **batch: Any) -> torch.Tensor: ...

    def output_weight(self) -> torch.Tensor:
        """The LM head ``[V, H]`` of the last stage (a DTensor under tensor parallel)."""
        ...

    def aux_losses(self) -> Sequence[torch.Tensor] | torch.Tensor:
        """Auxiliary losses of the last forward (MoE router balance), added with
        ``training.router_aux_loss_coef``; empty for dense models."""
        ...


@runtime_checkable
class Formatter(Protocol):
    """A data formatter (``mm_register_formatters``): one record -> model inputs."""

    pad_token_id: int

    def encode(self, sample: Any, *, pixels: bool = True) -> dict[str, Any]:
        """Token ids, labels and (with ``pixels``) the media tensors of one sample."""
        ...

    def dummy_vision(self) -> dict[str, torch.Tensor]:
        """Media inputs of a tiny dummy image, for batches without media (same ops on all ranks)."""
        ...

    def fingerprint(self) -> str:
        """What decides the encoding (tokenizer, template, settings): part of the index cache key."""
        ...


def missing_members(obj: object, protocol: type) -> list[str]:
    """Members of ``protocol`` that ``obj`` lacks; looked up statically, so properties (a
    formatter's lazily loaded tokenizer) are not evaluated."""
    missing = []
    for name in sorted(_protocol_attrs(protocol)):
        try:
            inspect.getattr_static(obj, name)
        except AttributeError:
            missing.append(name)
    return missing


def _protocol_attrs(protocol: type) -> set[str]:
    attrs: set[str] = set()
    for base in protocol.__mro__:
        if base.__name__ in ("Protocol", "Generic", "object"):
            continue
        attrs |= {n for n in (*vars(base), *getattr(base, "__annotations__", {}))
                  if not n.startswith("_")}
    return attrs


def require(obj: object, protocol: type, what: str) -> None:
    """ConfigError naming ``what`` and each member it lacks, unless ``obj`` fulfils ``protocol``."""
    missing = missing_members(obj, protocol)
    if missing:
        raise ConfigError(
            f"{what} ({type(obj).__module__}.{type(obj).__qualname__}) does not fulfil "
            f"mm_core.contracts.{protocol.__name__}: it lacks {', '.join(missing)}. "
            + ("Subclass mm_core.family.stage_model.StageModel, or add them." if protocol is StageModel else "Add them."))


def total_aux_loss(model: StageModel) -> torch.Tensor | None:
    """The sum of the model's auxiliary losses, or None when it has none."""
    aux = model.aux_losses()
    if isinstance(aux, torch.Tensor):
        return aux.sum() if aux.numel() else None
    return torch.stack([a.reshape(()) for a in aux]).sum() if len(aux) else None

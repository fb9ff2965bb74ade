"""Assign a checkpoint's tensors into a (meta-built, possibly tensor-parallel) module, after checking
that names and shapes match, so a mismatch fails before anything is half-loaded."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from mm_core.errors import MMError


class CheckpointMismatchError(MMError):
    """The checkpoint does not fit the model built for this rank."""


def _is_dtensor(t: torch.Tensor) -> bool:
    return hasattr(t, "device_mesh") and hasattr(t, "placements")


def _fitted(model: nn.Module, name: str, tensor: torch.Tensor) -> torch.Tensor:
    """A rank's checkpoint piece as the parameter holds it: a padded vocabulary shard (see
    ``mm_core.nn.vocab_padding``) has zero ghost rows after the converter's rows, a padded head split
    (``mm_core.nn.head_padding``) zero ghost heads after each section's real ones."""
    path, _, pname = name.rpartition(".")
    module = model.get_submodule(path)
    padding = getattr(module, "mm_vocab_padding", None) or getattr(module, "mm_param_padding", {}).get(pname)
    return padding.pad_piece(tensor) if padding is not None else tensor


def checkpoint_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """What a checkpoint holds for ``model``: its parameters and its persistent buffers (e.g. an MoE
    router's score-correction bias, which is no parameter because no gradient trains it)."""
    tensors = dict(model.named_parameters())
    persistent = set(model.state_dict(keep_vars=True))
    tensors.update((n, b) for n, b in model.named_buffers() if n in persistent)
    return tensors


def check_state(model: nn.Module, state: Mapping[str, torch.Tensor], *, source: str, fix: str) -> None:
    """Raise a ``CheckpointMismatchError`` naming missing, unexpected and mis-shaped keys and the fix."""
    params = checkpoint_tensors(model)
    missing = sorted(set(params) - set(state))
    unexpected = sorted(set(state) - set(params))
    wrong = []
    for name in sorted(set(params) & set(state)):
        p = params[name]
        local = p.to_local() if _is_dtensor(p) else p
        if tuple(local.shape) != tuple(_fitted(model, name, state[name]).shape):
            wrong.append(f"{name}: checkpoint {tuple(state[name].shape)} vs model {tuple(local.shape)}")
    if missing or unexpected or wrong:
        lines = [f"{source} does not match the model built for this rank:"]
        for title, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
            if items:
                shown = ", ".join(items[:6]) + (f" (+{len(items) - 6} more)" if len(items) > 6 else "")
                lines.append(f"  {title} ({len(items)}): {shown}")
        lines.append(f"  fix: {fix}")
        raise CheckpointMismatchError("\n".join(lines))


def assign_state(model: nn.Module, state: Mapping[str, torch.Tensor], *, source: str, fix: str) -> None:
    """Check, then assign each tensor as the parameter (no second copy of the model).

    A DTensor parameter (after the engine applied a tensor-parallel plan) receives the rank's
    local tensor with the parameter's mesh and placements: the rank's checkpoint file is its shard.
    Floating tensors take the parameter's dtype; a meta parameter takes the tensor's device.
    """
    check_state(model, state, source=source, fix=fix)
    params = checkpoint_tensors(model)
    buffers = set(dict(model.named_buffers()))
    for name, tensor in state.items():
        module_name, _, attr = name.rpartition(".")
        module = model.get_submodule(module_name)
        old = params[name]
        tensor = _fitted(model, name, tensor)
        device = tensor.device if old.device.type == "meta" else old.device
        dtype = old.dtype if tensor.dtype.is_floating_point else tensor.dtype
        tensor = tensor.to(device=device, dtype=dtype)
        if name in buffers:  # keeps the buffer's own dtype (an fp32 buffer in a bf16 model stays fp32)
            module.register_buffer(attr, tensor, persistent=True)
            continue
        if _is_dtensor(old):
            from torch.distributed.tensor import DTensor

            tensor = DTensor.from_local(tensor, old.device_mesh, old.placements, run_check=False,
                                        shape=old.shape, stride=old.stride())
        setattr(module, attr, nn.Parameter(tensor, requires_grad=old.requires_grad))

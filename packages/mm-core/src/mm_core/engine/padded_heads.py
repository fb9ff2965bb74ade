"""Tensor-parallel styles for attention split by heads: uneven head counts and norms over all heads.

The rules split an attention's fused ``[Q; K; V]`` rows, its output projection's input columns and
(InternViT-6B) its q/k RMSNorm weights by whole heads, the first ``heads mod tp`` ranks taking one
more. Where tp does not divide the heads, the engine trains zero-padded shards (``mm_core.nn.head_padding``)
whose real heads are exactly mm-convert's pieces; a norm whose channels span the heads of several
ranks all-reduces its sum of squares (``sharded_rms_norm``), padded or not.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from mm_core.checkpoint.ops import Split, TPSplit
from mm_core.nn.head_padding import HeadPadding, sharded_rms_norm


def head_paddings(splits: Mapping[str, TPSplit], model: nn.Module, tp: int) -> dict[str, dict[str, HeadPadding]]:
    """``{module path: {parameter: padding}}`` of the splits in whole units (heads: ``unit > 1`` or
    sections) that tp does not divide; everything else (even splits, vocabularies) is left out."""
    params = dict(model.named_parameters())
    out: dict[str, dict[str, HeadPadding]] = {}
    for name, split in splits.items():
        if not isinstance(split, Split) or name not in params or (split.unit == 1 and split.parts == 1):
            continue
        shape = params[name].shape
        split.sizes(shape, tp, name)  # raises, naming the tensor, for what even the converter cannot split
        units = shape[split.dim] // split.parts // split.unit
        if units % tp == 0:
            continue
        path, _, pname = name.rpartition(".")
        out.setdefault(path, {})[pname] = HeadPadding.of(units, tp, split.unit, parts=split.parts, dim=split.dim)
    return out


def _pad(module: nn.Module, paddings: Mapping[str, HeadPadding]) -> None:
    for pname, padding in paddings.items():
        param = getattr(module, pname)
        module.register_parameter(pname, nn.Parameter(padding.pad(param.detach()), requires_grad=param.requires_grad))
    module.mm_param_padding = dict(paddings)


def padded_linear(paddings: Mapping[str, HeadPadding], column: bool):
    """Column-parallel (``[Q; K; V]``, dim 0) or row-parallel (output projection, dim 1) over padded heads."""
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel

    base = ColwiseParallel if column else RowwiseParallel

    class PaddedHeadsLinear(base):  # type: ignore[valid-type, misc]
        param_rows = dict(paddings)  # row_order: engine <-> checkpoint order of these parameters

        def _apply(self, module: nn.Module, device_mesh) -> nn.Module:
            _pad(module, paddings)
            return super()._apply(module, device_mesh)

    return PaddedHeadsLinear()


def head_sharded_norm(padding: HeadPadding | None):
    """An RMSNorm over all heads' channels whose weight is split by heads: each rank normalises its
    channels with the all-reduced sum of squares over the real channel count."""
    from torch.distributed.tensor import Shard, distribute_tensor
    from torch.distributed.tensor.parallel.style import ParallelStyle

    class HeadShardedNorm(ParallelStyle):
        param_rows = {"weight": padding} if padding is not None else {}

        def _apply(self, module: nn.Module, device_mesh) -> nn.Module:
            channels = module.weight.shape[0]
            if padding is not None:
                _pad(module, {"weight": padding})
            w = module.weight
            module.register_parameter("weight", nn.Parameter(
                distribute_tensor(w.detach(), device_mesh, [Shard(0)], src_data_rank=None),
                requires_grad=w.requires_grad))
            group, eps = device_mesh.get_group(), module.eps

            def forward(x):
                return sharded_rms_norm(x, module.weight.to_local(), eps, channels, group)

            module.forward = forward
            return module

    return HeadShardedNorm()


def head_style(module: nn.Module, params: Mapping[str, TPSplit], paddings: Mapping[str, HeadPadding] | None
               ) -> Any | None:
    """The style of a module split by heads, or None when the ordinary styles fit."""
    from mm_core.nn import RMSNorm

    weight = params.get("weight")
    if isinstance(module, RMSNorm) and isinstance(weight, Split) and weight.dim == 0:
        return head_sharded_norm((paddings or {}).get("weight"))
    if paddings and isinstance(module, nn.Linear) and isinstance(weight, Split):
        return padded_linear(paddings, column=weight.dim == 0)
    return None

"""The engine's tensor-parallel plan, derived from the family's rule table.

The converter's rules are the one declaration of how each weight splits over tp ranks
(``mm_core.checkpoint.ops``: column, gated column, row, vocabulary, replicated). The engine reads
the rules of its stage and turns them into DTensor parallel styles, so the shard a rank trains is
by construction the piece mm-convert writes to its rank file:

- ``Split(dim=0)`` on a Linear -> column-parallel (``Shard(0)`` of weight and bias); with
  ``parts > 1`` (``[gate; up]``, ``[Q; K; V]``) each part is split on its own and rank r holds
  ``[part0_r; part1_r; ...]`` (:class:`SectionedColwiseParallel`);
- ``Split(dim=1)`` on a Linear -> row-parallel (its bias must be replicated);
- ``Split(dim=0)`` on an Embedding -> vocabulary-parallel rows;
- replicated -> no style.

What only the engine knows stays here: the output layer's gather (or a vocabulary-sharded
output for a vocab-parallel loss) and the sequence-parallel regions of the text decoder.

Uneven splits (units that tp does not divide): mm-format gives the first ``units mod tp`` ranks
one unit more, DTensor shards like ``torch.chunk``. Where the two agree (all ranks but the last
take one more: a vocabulary at tp 2) the engine trains it as is; an uneven vocabulary elsewhere
trains over zero-padded shards (``vocab_padding``), and so do attention heads (splits in units of a
head, ``padded_heads``), whose real rows are mm-convert's pieces; any other uneven split is refused
before any work, naming the tensor.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from mm_core.checkpoint.ops import Split, TPSplit
from mm_core.engine.padded_heads import head_paddings, head_style
from mm_core.errors import ConfigError
from mm_core.layout import Placement
from mm_core.nn.vocab_padding import VocabPadding

TEXT = "text_decoder"
OUTPUT = f"{TEXT}.output_layer"


def stage_splits(table: Any, hf_config: Mapping[str, Any], placement: Placement, stage: int) -> dict[str, TPSplit]:
    """``{stage-local parameter name: its tp split}`` from the rule table, for flattened stage ``stage``."""
    plan = table.plan(hf_config, placement)
    return {it.local_key: it.tp for it in plan.stage_items(stage)}


def plan_from_rules(model: nn.Module, converter: str | Any, hf_config: Mapping[str, Any], tp: int, *,
                    layers: Mapping[str, Any] | None = None, stage: int = 0, sequence_parallel: bool = False,
                    loss_parallel: bool = False) -> dict[str, Any]:
    """The derived plan of one stage (``layers``: ``{"vit": ..., "llm": ...}`` per-stage counts, as in the
    configs), for a model built outside the engine (tests, inference)."""
    from mm_core.checkpoint.api import get_converter

    table = get_converter(converter)
    placement = table.placement(hf_config, tp, dict(layers or {}))
    return derive_tp_plan(model, stage_splits(table, hf_config, placement, stage), tp,
                          sequence_parallel=sequence_parallel, loss_parallel=loss_parallel)


def _units(split: Split, size: int) -> int:
    return size // split.parts // split.unit


def dtensor_rows(size: int, tp: int) -> list[int]:
    """Rows per rank of DTensor's ``Shard`` (``torch.chunk``: ceil-sized pieces first, then what is left)."""
    step = -(-size // tp)
    return [max(0, min(step, size - r * step)) for r in range(tp)]


def uneven_vocabularies(splits: Mapping[str, TPSplit], model: nn.Module, tp: int) -> dict[str, VocabPadding]:
    """``{module path: padding}`` of the vocabulary splits DTensor cannot shard as mm-convert cuts them
    (see ``vocab_padding``); any other split that the engine cannot train is refused, naming the tensor
    (head splits are taken out first: ``padded_heads``).

    Even splits always agree. An uneven one (mm-format: the first ``units mod tp`` ranks take one
    unit more) agrees with ``torch.chunk`` when all but the last rank take one more (tp 2, say).
    """
    params = dict(model.named_parameters())
    padded: dict[str, VocabPadding] = {}
    for name, split in splits.items():
        if not isinstance(split, Split) or name not in params:
            continue
        size = params[name].shape[split.dim]
        split.sizes(params[name].shape, tp, name)  # raises for what even the converter cannot split
        units = _units(split, size)
        if units % tp == 0:
            continue
        path = name.rpartition(".")[0]
        if split.parts == 1:
            ours = [b - a for a, b in (split.rows_of_rank(size, tp, r) for r in range(tp))]
            if ours == dtensor_rows(size, tp):
                continue
            module = model.get_submodule(path)
            if split.dim == 0 and split.unit == 1 and (isinstance(module, nn.Embedding) or path == OUTPUT):
                padded[path] = VocabPadding(tuple(ours))
                continue
        raise ConfigError(
            f"parallel.tp {tp}: {name} has {units} {split.what}, which tp {tp} does not divide, and the engine "
            f"cannot train that split yet: mm-convert gives the first {units % tp} rank(s) one more, DTensor "
            f"shards like torch.chunk. Choose a tp that divides {units} (or tp 2)")
    return padded


def _pad_parameters(module: nn.Module, padding: VocabPadding) -> None:
    for pname, param in list(module.named_parameters(recurse=False)):
        module.register_parameter(pname, nn.Parameter(padding.pad(param.detach()), requires_grad=param.requires_grad))
    module.mm_vocab_padding = padding


def padded_vocab_embedding(padding: VocabPadding):
    """Vocabulary-parallel embedding over a padded vocabulary: ids are mapped to padded rows first."""
    from torch.distributed.tensor import Replicate
    from torch.distributed.tensor.parallel import RowwiseParallel

    class PaddedVocabEmbedding(RowwiseParallel):
        vocab_padding = padding

        def _apply(self, module: nn.Module, device_mesh) -> nn.Module:
            _pad_parameters(module, padding)
            module.num_embeddings = padding.tp * padding.width
            module.register_forward_pre_hook(lambda _m, args: (padding.padded_ids(args[0]), *args[1:]))
            return super()._apply(module, device_mesh)

    return PaddedVocabEmbedding(input_layouts=Replicate())


def padded_vocab_output(padding: VocabPadding, input_layout):
    """Column-parallel output layer over a padded vocabulary; the gathered logits drop the ghost columns."""
    from torch.distributed.tensor import Replicate
    from torch.distributed.tensor.parallel import ColwiseParallel

    class PaddedVocabOutput(ColwiseParallel):
        vocab_padding = padding

        def _apply(self, module: nn.Module, device_mesh) -> nn.Module:
            _pad_parameters(module, padding)
            module.out_features = padding.tp * padding.width
            module = super()._apply(module, device_mesh)
            module.register_forward_hook(lambda _m, _args, out: padding.unpad(out, dim=-1))
            return module

    return PaddedVocabOutput(input_layouts=input_layout, output_layouts=Replicate())


def sectioned_colwise(parts: int):
    """A column-parallel style for a Linear made of ``parts`` equal row blocks (``[gate; up]`` = 2)."""
    from torch.distributed.tensor import Shard, distribute_tensor
    from torch.distributed.tensor.parallel import ColwiseParallel

    from mm_core.engine.row_order import canonical_to_blocked

    class SectionedColwiseParallel(ColwiseParallel):
        """Rank r computes ``[part0_r; part1_r; ...]``: the rows are reordered tp-blocked before sharding,
        so the DTensor's global row order is tp-blocked (``row_sections`` tells checkpointing)."""

        row_sections = parts

        def _partition_linear_fn(self, name, module, device_mesh):
            tp = device_mesh.size()
            for pname, param in list(module.named_parameters(recurse=False)):
                if param.shape[0] % (parts * tp):
                    raise ConfigError(f"{name}.{pname}: {param.shape[0] // parts} rows per part do not split over "
                                      f"tp={tp}")
                rows = canonical_to_blocked(param.detach(), tp, parts)
                dist = nn.Parameter(distribute_tensor(rows, device_mesh, [Shard(0)], src_data_rank=self.src_data_rank),
                                    requires_grad=param.requires_grad)
                module.register_parameter(pname, dist)

    return SectionedColwiseParallel


def shard_sequence_on_entry(already_sharded: bool):
    """Sequence parallel: a style that splits a module's first positional input ``[B, T, H]`` over the
    sequence. The text decoder gets the whole sequence on its first stage (the embedding output)
    and, on later stages, the sequence shard the previous stage sent (``already_sharded``)."""
    from torch.distributed.tensor import DTensor, Replicate, Shard
    from torch.distributed.tensor.parallel.style import ParallelStyle

    class ShardSequenceOnEntry(ParallelStyle):
        def _apply(self, module: nn.Module, device_mesh) -> nn.Module:
            def split(_module, args, kwargs):
                if already_sharded or not args:
                    return args, kwargs
                hidden = DTensor.from_local(args[0], device_mesh, [Replicate()], run_check=False)
                return (hidden.redistribute(device_mesh, [Shard(1)]).to_local(), *args[1:]), kwargs

            module.register_forward_pre_hook(split, with_kwargs=True)
            return module

    return ShardSequenceOnEntry()


def _is_norm(module: nn.Module) -> bool:
    from mm_core.nn import RMSNorm

    return isinstance(module, (RMSNorm, nn.LayerNorm))


def derive_tp_plan(model: nn.Module, splits: Mapping[str, TPSplit], tp: int, *, sequence_parallel: bool = False,
                   loss_parallel: bool = False) -> dict[str, Any]:
    """``{module path: ParallelStyle}`` for a stage, from its parameters' rule splits.

    ``sequence_parallel``: the text decoder's activations are sharded over the sequence between
    the tp regions (norms and residuals run on the shard; qkv/fc1 all-gather, proj/fc2
    reduce-scatter). ``loss_parallel``: the output layer returns vocabulary-sharded logits.
    """
    from torch.distributed.tensor import Replicate, Shard
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, SequenceParallel

    heads = head_paddings(splits, model, tp)
    padded = uneven_vocabularies({k: v for k, v in splits.items() if k.rpartition(".")[0] not in heads}, model, tp)
    if padded and loss_parallel:
        raise ConfigError(f"{sorted(padded)}: a padded vocabulary has no vocabulary-sharded logits; gather them")
    by_module: dict[str, dict[str, TPSplit]] = {}
    for key, split in splits.items():
        path, _, pname = key.rpartition(".")
        by_module.setdefault(path, {})[pname] = split
    seq = Shard(1)
    plan: dict[str, Any] = {}
    for path, params in sorted(by_module.items()):
        if all(s.replicated for s in params.values()):
            continue
        module = model.get_submodule(path)
        in_text = sequence_parallel and path.startswith(f"{TEXT}.decoder.")
        weight = params.get("weight")
        if not isinstance(weight, Split):
            raise ConfigError(f"{path}: the rules split {sorted(params)} but not its weight; a tensor-parallel style "
                              f"cannot be derived")
        bias = params.get("bias")
        by_heads = head_style(module, params, heads.get(path))
        if by_heads is not None:
            plan[path] = by_heads
        elif path in padded:
            plan[path] = (padded_vocab_embedding(padded[path]) if isinstance(module, nn.Embedding)
                          else padded_vocab_output(padded[path], seq if sequence_parallel else Replicate()))
        elif isinstance(module, nn.Embedding) and weight.dim == 0 and weight.parts == 1:
            plan[path] = RowwiseParallel(input_layouts=Replicate())
        elif isinstance(module, nn.Linear) and weight.dim == 0:
            if bias is not None and (not isinstance(bias, Split) or (bias.dim, bias.parts) != (0, weight.parts)):
                raise ConfigError(f"{path}: a column-parallel weight needs its bias split the same way")
            if path == OUTPUT:
                into = seq if sequence_parallel else Replicate()
                plan[path] = (ColwiseParallel(input_layouts=into, output_layouts=Shard(-1), use_local_output=False)
                              if loss_parallel else ColwiseParallel(input_layouts=into, output_layouts=Replicate()))
            else:
                style = sectioned_colwise(weight.parts) if weight.parts > 1 else ColwiseParallel
                plan[path] = style(input_layouts=seq) if in_text else style()
        elif isinstance(module, nn.Linear) and weight.dim == 1:
            if bias is not None and not bias.replicated:
                raise ConfigError(f"{path}: a row-parallel weight needs a replicated bias")
            plan[path] = RowwiseParallel(output_layouts=seq) if in_text else RowwiseParallel()
        else:
            raise ConfigError(f"{path}: no tensor-parallel style for a {type(module).__name__} split as "
                              f"{weight.describe()}")
    if sequence_parallel:
        text = model.get_submodule(TEXT) if hasattr(model, TEXT) else None
        if text is not None:
            plan[TEXT] = shard_sequence_on_entry(already_sharded=not hasattr(text, "embedding"))
            for name, module in text.named_modules():
                if _is_norm(module) and name.startswith("decoder."):
                    last = name == "decoder.final_layernorm"
                    plan[f"{TEXT}.{name}"] = SequenceParallel(use_local_output=not last)
    return plan


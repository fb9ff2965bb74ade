"""DCP (torch.distributed.checkpoint) reading and writing, one process, tensor by tensor.

Key convention (what the training engine saves and loads): the model state is stored under
``model.<mm name>`` with *global* layer numbers and full (unsplit) tensors, i.e. the state dict of
the whole model on one process (DTensor shards are saved as their full logical tensor by DCP), so
a checkpoint can be loaded by any tp/pp layout. With tied embeddings no ``output_layer`` is
stored (one written by a pipeline's last stage is ignored). Readers also accept the same names
without the ``model.`` prefix.

Writing streams: a custom save planner fills each tensor only when the writer asks for it, and
each tensor gets its own file (DCP's writer keeps every tensor of a file alive until the file
is done, so one file per rank would hold the whole model: 2.1 GB peak RSS for a 1.5 GB model
instead of 0.87 GB).
Reading loads one tensor per ``dcp.load`` call into a preallocated buffer.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.default_planner import DefaultSavePlanner
from torch.distributed.checkpoint.metadata import TensorStorageMetadata

from mm_convert.output import Progress
from mm_convert.stacks import BLOCK_MB, block_bytes, large_rows, stack_rows
from mm_core.checkpoint.mm_dir import resolve_dcp_dir
from mm_core.checkpoint.rules import Plan
from mm_core.checkpoint.sources import Source, StateSource

if TYPE_CHECKING:
    from mm_convert.converter import Converter

MODEL_PREFIX = "model."


class _LazyPlanner(DefaultSavePlanner):
    """Plans from meta tensors and makes each real tensor on demand (bounded memory)."""

    def __init__(self, make: dict[str, Any], bar: Progress):
        super().__init__()
        self._make, self._bar = make, bar

    def resolve_data(self, write_item: Any) -> Any:
        fqn = write_item.index.fqn
        if fqn in self._make:
            t = self._make[fqn]()
            self._bar.update(t.numel() * t.element_size())
            return t
        return super().resolve_data(write_item)


def write_dcp(plan: Plan, source: Source, out: Path, *, progress: bool = True, block_mb: float = BLOCK_MB) -> None:
    """The model state of ``plan`` as DCP; a stacked tensor (experts), and a larger than ``block_mb``
    one the source reads by rows, is written as row chunks of at most ``block_mb`` MiB, each made
    only when the writer asks for it."""
    budget = block_bytes(block_mb)
    metas: dict[str, torch.Tensor] = {}
    make: dict[str, Any] = {}
    chunk_rows: dict[str, int] = {}
    for it in (it for it in plan.items if not it.tied_copy):
        key = MODEL_PREFIX + it.mm_key
        metas[key] = m = source.meta(it)
        rows = stack_rows(m, it.rule.op, budget, source.block_rows(it))
        if rows is None and source.rows(it) is not None:  # readable by rows (HF): a large one goes in blocks
            rows = large_rows(m, budget)
        if rows is None:
            make[key] = lambda it=it: source.full(it)
            continue
        chunk_rows[key] = rows
        make[key] = lambda b, it=it, rows=rows, n=m.shape[0]: source.block(it, b * rows, min((b + 1) * rows, n))
    save_lazily(metas, make, out, progress=progress, chunk_rows=chunk_rows or None)


def save_lazily(state: dict[str, Any], make: dict[str, Any], out: Path, *, progress: bool = True,
                chunk_rows: dict[str, int] | None = None) -> None:
    """``dcp.save`` of ``state`` (meta tensors, nested dicts and plain values allowed) into the new
    directory ``out``, each tensor made by ``make[flattened name]()`` only when the writer asks for it;
    a tensor named in ``chunk_rows`` is written as blocks of that many rows, ``make[name](block)``
    (``mm_convert.dcp_chunks``)."""
    total = sum(int(m.numel() * m.element_size()) for m in _tensors(state))
    bar = Progress(total, "write dcp", progress)
    out.mkdir(parents=True)
    if chunk_rows:
        from mm_convert.dcp_chunks import ChunkedLazyPlanner

        planner: DefaultSavePlanner = ChunkedLazyPlanner(make, bar, chunk_rows)
    else:
        planner = _LazyPlanner(make, bar)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "no process group: running as a single process"
        dcp.save(state, storage_writer=dcp.FileSystemWriter(str(out), thread_count=1, single_file_per_rank=False),
                 planner=planner, no_dist=True)
    bar.close()


def _tensors(state: Any) -> list[torch.Tensor]:
    if isinstance(state, dict):
        return [t for v in state.values() for t in _tensors(v)]
    return [state] if isinstance(state, torch.Tensor) else []


def dcp_source(conv: Converter, plan: Plan, dcp_dir: str | Path) -> Source:
    d = resolve_dcp_dir(dcp_dir)
    md = dcp.FileSystemReader(str(d)).read_metadata()
    tensors = {k: v for k, v in md.state_dict_metadata.items() if isinstance(v, TensorStorageMetadata)}
    want = {it.mm_key for it in plan.items if not it.tied_copy}
    prefix = MODEL_PREFIX if any(k.startswith(MODEL_PREFIX) and k[len(MODEL_PREFIX):] in want for k in tensors) else ""
    metas = {k[len(prefix):]: torch.empty(v.size, dtype=v.properties.dtype, device="meta")
             for k, v in tensors.items() if k.startswith(prefix)}
    ignore = plan.tied_keys
    # other training state (optim.*, train.*, rng.*) lives beside the model's modules: skip it
    first_names = {it.mm_key.split(".", 1)[0] for it in plan.items}
    metas = {k: v for k, v in metas.items() if k.split(".", 1)[0] in first_names}

    def load(key: str) -> torch.Tensor:
        m = metas[key]
        buf = {prefix + key: torch.empty(m.shape, dtype=m.dtype)}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dcp.load(buf, storage_reader=dcp.FileSystemReader(str(d)), no_dist=True)
        return buf[prefix + key]

    def load_rows(key: str, start: int, stop: int) -> torch.Tensor:
        from mm_convert.dcp_chunks import load_rows as load_stored_rows

        return load_stored_rows(d, prefix + key, start, stop, metas[key])

    # a read inside a stored chunk loads all of it: blocks are never smaller (a trainer's unsharded save
    # holds a layer's experts in one chunk, read once; hf_to_dcp's row chunks are read a block at a time)
    stored = {k[len(prefix):]: max(c.sizes[0] for c in v.chunks) for k, v in tensors.items()
              if k.startswith(prefix) and len(v.size) and v.chunks}
    return StateSource(metas, load, plan, str(d), ignore, load_rows=load_rows, stored_rows=stored)


"""Where full (unsplit, globally numbered) mm tensors come from: an HF dir, an mm dir or DCP.

Every verb is a source plus a sink over the items of a plan. A source gives each item's
meta tensor (shape and dtype, for validation and planning output files), its full tensor, and a
single tensor-parallel piece (read as little as possible).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from mm_core.checkpoint.errors import ConfigError, ConversionError, KeyMismatchError
from mm_core.checkpoint.hf import HFReader
from mm_core.checkpoint.mm_dir import RankFile, rank_dir_name, rank_dirs
from mm_core.checkpoint.rowcopy import FdCache, RowSource, read_segments, row_ids, segments
from mm_core.checkpoint.rules import Item, Plan
from mm_core.checkpoint.safetensors_io import TensorInfo, read_tensor

RowPlan = tuple[torch.Tensor, list[RowSource]]


def _row_source(info: TensorInfo | None) -> RowSource | None:
    if info is None or not info.shape or info.shape[0] == 0:
        return None
    return RowSource(info.path, info.start, info.shape[0], info.nbytes // info.shape[0])


def meta(shape: Sequence[int], dtype: torch.dtype) -> torch.Tensor:
    """Shape and dtype only (no data; no meta-kernel dispatch)."""
    return torch.empty(tuple(shape), dtype=dtype, device="meta")


class Source:
    fds: FdCache
    _whole: tuple[Item, torch.Tensor] | None = None  # block()'s fallback: the last item made whole

    def meta(self, item: Item) -> torch.Tensor:
        raise NotImplementedError

    def rows(self, item: Item) -> RowPlan | None:
        """Row ids of the full mm tensor and the stored tensors they point into, when the item can
        be copied file to file (see :mod:`mm_core.checkpoint.rowcopy`); None otherwise."""
        return None

    def close(self) -> None:
        self._whole = None
        fds = getattr(self, "fds", None)
        if fds is not None:
            fds.close()

    def full(self, item: Item) -> torch.Tensor:
        raise NotImplementedError

    def block(self, item: Item, start: int, stop: int) -> torch.Tensor:
        """Slices ``[start, stop)`` of dim 0 of the full mm tensor (a few experts of a stack), read
        without the rest where the source allows; this fallback makes the whole tensor once per item
        (kept until another item's block is asked for) and slices it."""
        if self._whole is None or self._whole[0] is not item:
            self._whole = None  # the previous item's tensor is freed before this one is made
            self._whole = (item, self.full(item))
        return self._whole[1][start:stop]

    def block_rows(self, item: Item) -> int:
        """The fewest slices of dim 0 worth reading at once: a stored chunk (a DCP shard) is read
        whole by any read inside it, so a block smaller than it would read it again and again."""
        return 1

    def piece(self, item: Item, tp: int, rank: int) -> torch.Tensor:
        t = item.tp.piece(self.full(item), tp, rank)
        return t.clone() if tp > 1 and not item.tp.replicated else t

    def order(self, items: list[Item]) -> list[Item]:
        """A read-friendly order (file order for HF)."""
        return items


class HFSource(Source):
    def __init__(self, reader: HFReader):
        self.reader = reader
        self._pos = {k: i for i, k in enumerate(reader.order)}
        self.fds = FdCache()

    def rows(self, item: Item) -> RowPlan | None:
        if not item.rule.op.rows_only:
            return None
        refs = [_row_source(self.reader.infos[k]) for k in item.hf_keys]
        if any(r is None for r in refs) or len({r.row_bytes for r in refs}) > 1:  # type: ignore[union-attr]
            return None
        ids = item.rule.op.forward([row_ids(i, r.rows) for i, r in enumerate(refs)])  # type: ignore[union-attr]
        return ids, refs  # type: ignore[return-value]

    def meta(self, item: Item) -> torch.Tensor:
        infos = [self.reader.infos[k] for k in item.hf_keys]
        dtypes = {i.dtype for i in infos}
        if len(dtypes) > 1:
            raise ValueError(f"{', '.join(item.hf_keys)} have different dtypes {sorted(map(str, dtypes))}")
        return meta(item.rule.op.forward_shape([i.shape for i in infos]), infos[0].dtype)

    def full(self, item: Item) -> torch.Tensor:
        return item.rule.op.forward([self.reader.read(k) for k in item.hf_keys])

    def block(self, item: Item, start: int, stop: int) -> torch.Tensor:
        op = item.rule.op
        if op.blocks > 1:
            per = op.arity // op.blocks  # only the HF tensors of these slices are read
            return op.sub(stop - start).forward([self.reader.read(k) for k in item.hf_keys[start * per:stop * per]])
        rows = self.rows(item)
        if rows is None:
            return super().block(item, start, stop)
        ids, refs = rows  # only these rows leave the disk (a block of the word embedding)
        return self._read_rows(item, ids[start:stop], refs)

    def _read_rows(self, item: Item, ids: torch.Tensor, refs: list[RowSource]) -> torch.Tensor:
        meta = self.meta(item)
        out = torch.empty((ids.numel(), *meta.shape[1:]), dtype=meta.dtype)
        return read_segments(segments(ids, refs), out, self.fds)

    def piece(self, item: Item, tp: int, rank: int) -> torch.Tensor:
        rows = self.rows(item) if item.tp.rows_only else None
        if rows is None:
            return super().piece(item, tp, rank)
        ids, refs = rows  # only this rank's rows leave the disk
        return self._read_rows(item, item.tp.piece(ids, tp, rank), refs)

    def order(self, items: list[Item]) -> list[Item]:
        return sorted(items, key=lambda it: min(self._pos.get(k, 1 << 60) for k in it.hf_keys))


class MMSource(Source):
    """The rank files of one mm iteration directory, for the plan of the layout they were saved in."""

    def __init__(self, it_dir: Path, plan: Plan, tp_size: int, tied_keys: set[str]):
        self.dir, self.plan, self.tp = it_dir, plan, tp_size
        pl = plan.placement
        found = rank_dirs(it_dir)
        want = {(t, p) for t in range(tp_size) for p in range(pl.pp)}
        if set(found) != want:
            missing = sorted(rank_dir_name(t, p, pl.pp) for t, p in want - set(found))
            extra = sorted(found[k].name for k in set(found) - want)
            raise ConversionError(f"{it_dir} does not match its layout (tp {tp_size}, pp {pl.pp}): missing "
                                  f"{missing}, unexpected {extra}")
        self.files = {k: RankFile(v) for k, v in found.items()}
        self.by_key = plan.by_mm_key()
        self.fds = FdCache()
        self._check(tied_keys)

    def _check(self, tied_keys: set[str]) -> None:
        pl = self.plan.placement
        problems = []
        for (_t, p), f in sorted(self.files.items()):
            if f.chunks != pl.vpp:
                problems.append(f"{f.dir}: {f.chunks} virtual chunk(s), layout has {pl.vpp}")
                continue
            for v in range(pl.vpp):
                stage = pl.stage_of(p, v)
                want = {it.local_key for it in self.plan.stage_items(stage)}
                have = f.keys(v)
                tied_here = {k for k in have - want if k in tied_keys}
                missing, unexpected = sorted(want - have), sorted(have - want - tied_here)
                where = f"{f.dir}" + (f" chunk {v}" if pl.vpp > 1 else "") + f" (stage {stage})"
                if missing:
                    problems.append(f"{where}: missing {missing[:6]}" + (f" (+{len(missing) - 6})" if len(missing) > 6 else ""))
                if unexpected:
                    problems.append(f"{where}: unexpected {unexpected[:6]}"
                                    + (f" (+{len(unexpected) - 6})" if len(unexpected) > 6 else ""))
        if problems:
            raise KeyMismatchError("the mm checkpoint does not match its layout and config.json:\n  "
                                   + "\n  ".join(problems[:20]))

    def _src(self, item: Item) -> Item:
        src = self.by_key.get(item.mm_key)
        if src is None and item.tied_copy:  # the source tied to its own embedding on that stage
            src = next(it for it in self.plan.items if item.rule.tied_to in it.hf_keys and not it.tied_copy)
        if src is None:
            raise ConversionError(f"{item.mm_key} is in no rank file of {self.dir}")
        return src

    def _read(self, src: Item, t: int, meta: bool) -> torch.Tensor:
        p, v = self.plan.placement.rank_of(src.stage)
        f = self.files[(t, p)]
        return f.meta(src.local_key, v) if meta else f.read(src.local_key, v)

    def _gather(self, item: Item) -> torch.Tensor:
        src = self._src(item)
        if src.tp.replicated:
            return self._read(src, 0, False)
        return src.tp.merge([self._read(src, t, False) for t in range(self.tp)])

    def meta(self, item: Item) -> torch.Tensor:
        src = self._src(item)
        parts = [self._read(src, t, True) for t in ([0] if src.tp.replicated else range(self.tp))]
        return meta(src.tp.merge_shape([tuple(p.shape) for p in parts]), parts[0].dtype)

    def rows(self, item: Item) -> RowPlan | None:
        src = self._src(item)
        if not (src.tp.rows_only or self.tp == 1):
            return None
        p, v = self.plan.placement.rank_of(src.stage)
        whole = src.tp.replicated or self.tp == 1
        ranks = [0] if whole else list(range(self.tp))
        refs = [_row_source(self.files[(t, p)].info(src.local_key, v)) for t in ranks]
        if any(r is None for r in refs):
            return None
        pieces = [row_ids(i, r.rows) for i, r in enumerate(refs)]  # type: ignore[union-attr]
        return (pieces[0] if whole else src.tp.merge(pieces)), refs  # type: ignore[return-value]

    def full(self, item: Item) -> torch.Tensor:
        return self._gather(item)

    def block(self, item: Item, start: int, stop: int) -> torch.Tensor:
        src = self._src(item)
        if src.tp.replicated or self.tp == 1:  # rank 0's file holds the whole tensor: read its rows
            p, v = self.plan.placement.rank_of(src.stage)
            info = self.files[(0, p)].info(src.local_key, v)
            if info is not None:
                return read_tensor(info, (start, stop))
        return super().block(item, start, stop)

    def order(self, items: list[Item]) -> list[Item]:
        return sorted(items, key=lambda it: self._src(it).stage)


class StateSource(Source):
    """Full tensors by global mm name (a DCP checkpoint's model state, or a dict in tests)."""

    def __init__(self, metas: Mapping[str, torch.Tensor], load: Any, plan: Plan, where: str, ignore: set[str],
                 load_rows: Callable[[str, int, int], torch.Tensor] | None = None,
                 stored_rows: Mapping[str, int] | None = None):
        """``load(key)``: a whole tensor; ``load_rows(key, start, stop)``: rows of dim 0 only (optional);
        ``stored_rows``: the rows of a tensor's largest stored chunk (see :meth:`Source.block_rows`)."""
        self.metas, self.load, self.plan, self.load_rows = metas, load, plan, load_rows
        self.stored_rows = dict(stored_rows or {})
        want = {it.mm_key for it in plan.items if not it.tied_copy}
        missing = sorted(want - set(metas))
        unexpected = sorted(set(metas) - want - ignore)
        if missing or unexpected:
            lines = [f"{where} does not hold the model this converter expects:"]
            for title, keys in (("missing", missing), ("unexpected", unexpected)):
                if keys:
                    lines.append(f"  {title} ({len(keys)}): {', '.join(keys[:8])}" + (" ..." if len(keys) > 8 else ""))
            raise KeyMismatchError("\n".join(lines))
        self._embedding = {it.rule.tied_to: it.mm_key for it in plan.items if it.tied_copy}

    def _key(self, item: Item) -> str:
        if item.tied_copy:
            src = next(it for it in self.plan.items if item.rule.tied_to in it.hf_keys and not it.tied_copy)
            return src.mm_key
        return item.mm_key

    def meta(self, item: Item) -> torch.Tensor:
        m = self.metas[self._key(item)]
        return torch.empty(m.shape, dtype=m.dtype, device="meta")

    def full(self, item: Item) -> torch.Tensor:
        return self.load(self._key(item))

    def block_rows(self, item: Item) -> int:
        return self.stored_rows.get(self._key(item), 1)

    def block(self, item: Item, start: int, stop: int) -> torch.Tensor:
        if self.load_rows is None:
            return super().block(item, start, stop)
        return self.load_rows(self._key(item), start, stop)


def check_shapes(plan: Plan, source: Source, tp_size: int, items: list[Item] | None = None) -> None:
    """Run every item's ops on meta tensors: wrong head counts, shapes that do not split over
    ``tp_size`` and the like fail here, naming the key, before any output exists."""
    problems = []
    for it in items if items is not None else plan.items:
        try:
            m = source.meta(it)
            it.tp.sizes(tuple(m.shape), tp_size, it.mm_key)
        except ConfigError as e:
            problems.append(str(e))
        except (RuntimeError, ValueError) as e:
            problems.append(f"{it.mm_key} (from {', '.join(it.hf_keys)}): {e}")
    if problems:
        more = f"\n  (+{len(problems) - 12} more)" if len(problems) > 12 else ""
        raise ConfigError("the checkpoint cannot be converted to this layout:\n  " + "\n  ".join(problems[:12]) + more)

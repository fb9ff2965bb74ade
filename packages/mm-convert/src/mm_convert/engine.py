"""The verbs: a source and a sink over the items of a plan, validated first, written atomically.

Order of work in every verb: read headers and configs, build the plan(s), check keys, run all
ops on meta tensors (shapes, tp divisibility), refuse a non-empty target, and only then stream
tensor by tensor into a temporary directory that is renamed into place at the end.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from mm_convert.config import DcpToHfConfig, HfToDcpConfig, HfToMmConfig, MmToHfConfig, ResplitConfig
from mm_convert.output import Progress, atomic_dir, check_target
from mm_convert.stacks import BLOCK_MB, block_bytes, large_rows, row_blocks, stack_rows
from mm_core.checkpoint.errors import ConfigError, ConversionError
from mm_core.checkpoint.hf import HFReader, HFWriter, copy_aux_files, from_canonical, load_hf_config
from mm_core.checkpoint.mm_dir import (
    chunk_file_name,
    iteration_dir_name,
    rank_dir_name,
    read_layout,
    resolve_dcp_dir,
    resolve_iteration_dir,
    write_latest,
)
from mm_core.checkpoint.ops import Transform
from mm_core.checkpoint.rowcopy import segments
from mm_core.checkpoint.rules import Plan, check_keys
from mm_core.checkpoint.safetensors_io import StreamingWriter, nbytes_of
from mm_core.checkpoint.sources import HFSource, MMSource, Source, check_shapes
from mm_core.layout import LAYOUT_FILE, Layout, Placement

if TYPE_CHECKING:
    from mm_convert.converter import Converter

Spec = tuple[tuple[int, ...], torch.dtype]


def _log(msg: str) -> None:
    print(f"[mm-convert] {msg}", flush=True)


# ---------------------------------------------------------------------------------------------
# planning helpers


def hf_plan(conv: Converter, hf_dir: str | Path, tp_size: int, layers: Mapping[str, Any]
            ) -> tuple[dict[str, Any], HFReader, Placement, Plan, HFSource]:
    hf_config = load_hf_config(hf_dir)
    reader = HFReader(hf_dir, conv.hf_aliases)
    placement = conv.placement(hf_config, tp_size, layers)
    plan = conv.plan(hf_config, placement, present_hf=reader.keys())
    check_keys(plan, reader.keys(), str(hf_dir))
    source = HFSource(reader)
    check_shapes(plan, source, tp_size)
    return hf_config, reader, placement, plan, source


def mm_plan(conv: Converter, mm_dir: str | Path, iteration: str | None, hf_dir: str | None
            ) -> tuple[dict[str, Any], Layout, Plan, MMSource]:
    """The plan of an mm checkpoint in the layout it was saved in (recorded, else inferred)."""
    it_dir = resolve_iteration_dir(mm_dir, iteration)
    cfg_dir = _config_dir(mm_dir, it_dir, hf_dir)
    hf_config = load_hf_config(cfg_dir)
    layout = read_layout(mm_dir, iteration, conv.layer_prefixes(hf_config))
    layers = {"vit": layout.vit_pp_layers, "llm": layout.llm_pp_layers}
    layers.update({k[: -len("_pp_layers")]: v for k, v in layout.extra.items() if k.endswith("_pp_layers")})
    layers = {m: v for m, v in layers.items() if m in conv.modules}
    placement = conv.placement(hf_config, layout.tp_size, layers)
    if placement.pp != layout.pp_size:
        raise ConversionError(f"{it_dir}: the layer lists describe {placement.pp} pp stages, the rank directories "
                              f"{layout.pp_size}")
    plan = conv.plan(hf_config, placement, present_hf=None)
    source = MMSource(it_dir, plan, layout.tp_size, plan.tied_keys)
    check_shapes(plan, source, layout.tp_size)
    return hf_config, layout, plan, source


def _config_dir(mm_dir: str | Path, it_dir: Path, hf_dir: str | None) -> Path:
    for d in (Path(mm_dir), it_dir, it_dir.parent):
        if (d / "config.json").is_file():
            return d
    if hf_dir:
        return Path(hf_dir)
    raise ConfigError(f"{mm_dir} has no config.json (not written by mm-convert): pass the original HF directory "
                      f"with --cfg.hf_config.hf_dir")


def _layer_args(parallel: Any, modules: tuple[str, ...]) -> dict[str, Any]:
    return {m: getattr(parallel, f"{m}_pp_layers", None) for m in modules}


# ---------------------------------------------------------------------------------------------
# sinks


def write_mm(plan: Plan, source: Source, out: Path, layout: Layout, *, progress: bool = True,
             iteration: str | None = None, block_mb: float = BLOCK_MB) -> int:
    """Every rank file of ``plan`` under ``out/<release|iter>``, tensor by tensor (a stacked tensor
    a block of at most ``block_mb`` MiB at a time)."""
    budget = block_bytes(block_mb)
    pl = plan.placement
    tp = pl.tp_size
    it_name = "release" if iteration is None else iteration
    specs: dict[tuple[int, int, int], dict[str, Spec]] = {}
    for it in plan.items:
        m = source.meta(it)
        p, v = pl.rank_of(it.stage)
        for t, shape in enumerate(it.tp.split_shapes(tuple(m.shape), tp)):
            specs.setdefault((t, p, v), {})[it.local_key] = (shape, m.dtype)
    writers: dict[tuple[int, int, int], StreamingWriter] = {}
    it_dir = out / it_name
    for t in range(tp):
        for p in range(pl.pp):
            d = it_dir / rank_dir_name(t, p, pl.pp)
            d.mkdir(parents=True)
            for v in range(pl.vpp):
                meta = {"format": "pt", "tp_rank": str(t), "pp_rank": str(p), "vpp_chunk": str(v),
                        "stage": str(pl.stage_of(p, v)), "converter": layout.converter or ""}
                writers[(t, p, v)] = StreamingWriter(d / chunk_file_name(v, pl.nested), specs.get((t, p, v), {}), meta)
    total = sum(nbytes_of(*s) for f in specs.values() for s in f.values())
    bar = Progress(total, f"write mm (tp {tp}, pp {pl.pp})", progress)
    try:
        for it in source.order(plan.items):
            p, v = pl.rank_of(it.stage)
            rows = source.rows(it) if it.tp.rows_only or tp == 1 else None
            if rows is not None:  # file to file, in the kernel
                ids, refs = rows
                for t, piece in enumerate(it.tp.split(ids, tp) if tp > 1 else [ids]):
                    bar.update(writers[(t, p, v)].copy(it.local_key, segments(piece, refs), source.fds))
                continue
            meta = source.meta(it)
            rows_per = stack_rows(meta, it.rule.op, budget, source.block_rows(it))
            if rows_per is not None and (tp == 1 or it.tp.replicated or not it.tp.rows_only):
                for a, b in row_blocks(meta.shape[0], rows_per):  # every rank's piece of a block is rows a..b
                    block = source.block(it, a, b)
                    for t, piece in enumerate(it.tp.split(block, tp) if tp > 1 else [block]):
                        bar.update(writers[(t, p, v)].write_rows(it.local_key, piece, a))
                    del block
                continue
            full = source.full(it)
            pieces = it.tp.split(full, tp)
            for t in range(tp):
                bar.update(writers[(t, p, v)].write(it.local_key, pieces[t]))
            del full, pieces
        for w in writers.values():
            w.close()
    except BaseException:
        for w in writers.values():
            w.abort()
        raise
    finally:
        source.close()
    secs = bar.close()
    (it_dir / LAYOUT_FILE).write_text(layout.as_json() + "\n")
    (out / LAYOUT_FILE).write_text(layout.as_json() + "\n")
    write_latest(out, it_name)
    if progress:
        _log(f"wrote {total / 1e9:.3f} GB in {secs:.2f} s ({total / 1e9 / max(secs, 1e-9):.2f} GB/s)")
    return total


def write_hf(plan: Plan, source: Source, out: Path, *, key_style: str, aliases: tuple[tuple[str, str], ...],
             max_shard_bytes: int, progress: bool = True, block_mb: float = BLOCK_MB) -> int:
    """HF shards (+ fresh index) from the full mm tensors of ``plan`` (a stacked tensor read a block
    of at most ``block_mb`` MiB at a time)."""
    budget = block_bytes(block_mb)
    items = [it for it in plan.items if not it.tied_copy]
    specs: dict[str, Spec] = {}
    for it in items:
        m = source.meta(it)
        for k, shape in zip(it.hf_keys, it.rule.op.inverse_shapes(tuple(m.shape))):
            specs[k] = (shape, m.dtype)

    def name(k: str) -> str:
        return from_canonical(k, aliases) if key_style == "new" else k

    writer = HFWriter(out, {name(k): v for k, v in specs.items()}, max_shard_bytes)
    bar = Progress(writer.total, "write hf", progress)
    try:
        for it in source.order(items):
            rows = source.rows(it) if it.rule.op.rows_only else None
            if rows is not None:  # file to file, in the kernel
                ids, refs = rows
                for k, hf_ids in zip(it.hf_keys, it.rule.op.inverse(ids)):
                    bar.update(writer.copy(name(k), segments(hf_ids, refs), source.fds))
                continue
            op, meta = it.rule.op, source.meta(it)
            rows_per = stack_rows(meta, op, budget, source.block_rows(it))
            if rows_per is not None:  # a few slices at a time, each to its own HF tensors
                per = op.arity // op.blocks
                for a, b in row_blocks(meta.shape[0], rows_per):
                    for k, t in zip(it.hf_keys[a * per:b * per], op.sub(b - a).inverse(source.block(it, a, b))):
                        bar.update(writer.write(name(k), t))
                continue
            rows_per = large_rows(meta, budget, source.block_rows(it)) if type(op) is Transform else None
            if rows_per is not None:  # a large renamed tensor stored in row chunks (DCP): a block at a time
                for a, b in row_blocks(meta.shape[0], rows_per):
                    bar.update(writer.write_rows(name(it.hf_keys[0]), source.block(it, a, b), a))
                continue
            for k, t in zip(it.hf_keys, it.rule.op.inverse(source.full(it))):
                bar.update(writer.write(name(k), t))
        writer.close()
    except BaseException:
        writer.abort()
        raise
    finally:
        source.close()
    secs = bar.close()
    if progress:
        _log(f"wrote {writer.total / 1e9:.3f} GB in {secs:.2f} s ({writer.total / 1e9 / max(secs, 1e-9):.2f} GB/s)")
    return writer.total


# ---------------------------------------------------------------------------------------------
# verbs


def hf_to_mm(conv: Converter, cfg: HfToMmConfig, progress: bool = True) -> None:
    block_bytes(cfg.block_mb)  # a bad flag is refused before any work
    hf_dir = cfg.hf_config.hf_dir
    if not hf_dir:
        raise ConfigError("--cfg.hf_config.hf_dir is required for hf_to_mm")
    par = cfg.parallel_config
    _, reader, placement, plan, source = hf_plan(conv, hf_dir, par.tp_size, _layer_args(par, conv.modules))
    layout = placement.layout(converter=conv.name, hf_key_style=reader.key_style)
    with atomic_dir(cfg.mm_dir, cfg.overwrite) as tmp:
        copy_aux_files(hf_dir, tmp)  # config.json and tokenizer files: the mm dir stands on its own
        write_mm(plan, source, tmp, layout, progress=progress, block_mb=cfg.block_mb)


def _dcp_dir_of(mm_dir: str | Path, iteration: str | None) -> Path | None:
    """The DCP directory when ``mm_dir`` is a training save dir or one of its iterations."""
    d = Path(mm_dir)
    try:
        return resolve_dcp_dir(d / iteration_dir_name(iteration) if iteration is not None else d)
    except ConversionError:
        return None


def mm_to_hf(conv: Converter, cfg: MmToHfConfig, progress: bool = True) -> None:
    block_bytes(cfg.block_mb)
    dcp_dir = _dcp_dir_of(cfg.mm_dir, cfg.iteration)
    if dcp_dir is not None:  # a training checkpoint (save/iter_0000100): same as dcp_to_hf
        hf_dir = cfg.hf_config.hf_dir or str(_config_dir(cfg.mm_dir, dcp_dir, None))
        dcp_to_hf(conv, DcpToHfConfig(hf_dir=hf_dir, dcp_dir=str(dcp_dir), save_dir=cfg.save_hf_dir,
                                      overwrite=cfg.overwrite, max_shard_size_gb=cfg.max_shard_size_gb,
                                      block_mb=cfg.block_mb), progress)
        return
    hf_config, layout, plan, source = mm_plan(conv, cfg.mm_dir, cfg.iteration, cfg.hf_config.hf_dir)
    check_target(cfg.save_hf_dir, cfg.overwrite, "--cfg.overwrite")
    with atomic_dir(cfg.save_hf_dir, cfg.overwrite) as tmp:
        aux_src = Path(cfg.hf_config.hf_dir) if cfg.hf_config.hf_dir else Path(cfg.mm_dir)
        copy_aux_files(aux_src, tmp)
        write_hf(plan, source, tmp, key_style=layout.hf_key_style or "old", aliases=conv.hf_aliases,
                 max_shard_bytes=int(cfg.max_shard_size_gb * 1024**3), progress=progress, block_mb=cfg.block_mb)


def resplit(conv: Converter, cfg: ResplitConfig, progress: bool = True) -> None:
    block_bytes(cfg.block_mb)
    hf_config, layout, src_plan, source = mm_plan(conv, cfg.mm_dir, cfg.iteration, cfg.hf_config.hf_dir)
    par = cfg.parallel_config
    placement = conv.placement(hf_config, par.tp_size, _layer_args(par, conv.modules))
    plan = conv.plan(hf_config, placement, present_hf=None)
    missing = sorted({it.mm_key for it in plan.items if not it.tied_copy} - set(source.by_key))
    if missing:
        raise ConversionError(f"{cfg.mm_dir} lacks tensors the new layout needs: {missing[:6]}")
    check_shapes(plan, source, par.tp_size)
    new_layout = placement.layout(converter=conv.name, hf_key_style=layout.hf_key_style)
    with atomic_dir(cfg.save_dir, cfg.overwrite) as tmp:
        src_root = Path(cfg.mm_dir)
        aux = src_root if (src_root / "config.json").is_file() else Path(cfg.hf_config.hf_dir or src_root)
        copy_aux_files(aux, tmp)
        write_mm(plan, source, tmp, new_layout, progress=progress, block_mb=cfg.block_mb)


def hf_to_dcp(conv: Converter, cfg: HfToDcpConfig, progress: bool = True) -> None:
    from mm_convert import dcp

    block_bytes(cfg.block_mb)
    _, reader, placement, plan, source = hf_plan(conv, cfg.hf_dir, 1, {})
    with atomic_dir(cfg.save_dir, cfg.overwrite, "--overwrite") as tmp:
        dcp.write_dcp(plan, source, tmp / "release", progress=progress, block_mb=cfg.block_mb)
        write_latest(tmp, "release")
        (tmp / "mm_dcp.json").write_text(json.dumps({"converter": conv.name, "hf_key_style": reader.key_style,
                                                     "key_prefix": dcp.MODEL_PREFIX}, indent=1) + "\n")


def dcp_to_hf(conv: Converter, cfg: DcpToHfConfig, progress: bool = True) -> None:
    from mm_convert import dcp

    block_bytes(cfg.block_mb)
    hf_config = load_hf_config(cfg.hf_dir)
    placement = conv.placement(hf_config, 1, {})
    plan = conv.plan(hf_config, placement, present_hf=None)
    source = dcp.dcp_source(conv, plan, cfg.dcp_dir)
    check_shapes(plan, source, 1)
    reader_style = "old"
    try:
        reader_style = HFReader(cfg.hf_dir, conv.hf_aliases).key_style
    except ConversionError:
        pass  # an HF dir with config and tokenizer only is fine
    check_target(cfg.save_dir, cfg.overwrite, "--overwrite")
    with atomic_dir(cfg.save_dir, cfg.overwrite, "--overwrite") as tmp:
        copy_aux_files(cfg.hf_dir, tmp)
        write_hf(plan, source, tmp, key_style=reader_style, aliases=conv.hf_aliases,
                 max_shard_bytes=int(cfg.max_shard_size_gb * 1024**3), progress=progress, block_mb=cfg.block_mb)

"""``ExpertMergeDcpConverter``: GLM-4.5V's Hub checkpoint <-> the reference system's DCP layout.

The reference (MindSpeed-MM) trains GLM-4.5V on transformers-style names with each MoE layer's
experts merged; this converter writes and reads exactly that checkpoint:

- for layers ``first_k_dense_replace``..: per expert ``[gate; up]`` ``[2I, H]`` transposed to
  ``[H, 2I]``, stacked over experts and flattened -> ``...mlp.experts.gate_up_proj`` ``[E*H, 2I]``;
  ``down`` ``[H, I]`` transposed to ``[I, H]`` -> ``...mlp.experts.down_proj`` ``[E*I, H]``;
- every other tensor as is; every key prefixed ``model.`` (``model.lm_head.weight``, ...);
- saved with torch DCP as ``{"model": state, "checkpoint_version": 3.0}`` under
  ``<save_dir>/release/`` with ``latest_checkpointed_iteration.txt`` = ``release``.

``dcp_to_hf`` reads such a directory (or the save dir), splits the experts back into the Hub's
per-expert tensors (bit-exact), writes safetensors shards of at most 4 GB with a fresh index, and
copies config, tokenizer and processor files from ``--hf_dir``. Given a checkpoint of mm's trainer
instead (``save_dir/iter_0000100``: mm names, maybe with optimizer state, which is not read), it
converts that with ``GlmConverter``'s rules, so the seed's convert -> finetune -> convert back
commands work as written (``mm_glm.reference_layout`` lets the trainer load this layout). Both directions stream: a merged
tensor is written one expert block at a time (DCP row chunks, ``mm_convert.dcp_chunks``) and read a
few experts at a time, so it never exists whole in memory (GLM-4.5V: 2.95 GB a layer in bf16).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from mm_convert.stacks import BLOCK_MB, block_bytes, large_rows, row_blocks
from mm_core.checkpoint.errors import ConfigError, ConversionError
from mm_core.checkpoint.expert_ops import StackDown, StackGateUp

DCP_PREFIX = "model."  # the reference's dcp_prefix (its hf_prefix is empty)
STATE_KEY = "model"  # the reference saves {"model": state, "checkpoint_version": 3.0}
CHECKPOINT_VERSION = 3.0
LAYER = "model.language_model.layers.{layer}.mlp.experts."
EXPERT = re.compile(r"^model\.language_model\.layers\.(\d+)\.mlp\.experts\.(\d+)\.(gate|up|down)_proj\.weight$")


def _moe_layout(hf_dir: str | Path) -> tuple[int, range]:
    """(experts per layer, the MoE layers) from ``hf_dir``'s config.json."""
    from mm_core.errors import ConfigError as CoreConfigError
    from mm_glm.moe_config import parse_moe_config

    try:
        cfg = parse_moe_config(hf_dir)
    except CoreConfigError as e:
        raise ConfigError(str(e)) from e
    text = cfg.text
    return text.moe.num_experts, range(text.first_k_dense_replace, text.num_layers)  # type: ignore[attr-defined]


class ExpertMergeDcpConverter:
    """GLM-4.5V: HF (per-expert tensors) <-> DCP with merged experts (the reference system's layout)."""

    name = "ExpertMergeDcpConverter"

    def hf_to_dcp(self, hf_dir: str, save_dir: str, overwrite: bool = False, trust_remote_code: bool = False,
                  block_mb: float = BLOCK_MB) -> None:
        """Write the HF checkpoint as a DCP checkpoint with merged experts (``save_dir/release``).

        Args:
            hf_dir: the GLM-4.5V HF directory (config.json + *.safetensors)
            save_dir: output directory (gets latest_checkpointed_iteration.txt and release/)
            overwrite: replace a non-empty save_dir
            trust_remote_code: accepted for the reference's command line; nothing runs model code
            block_mb: the largest row chunk a plain tensor is written in (the word embedding)
        """
        from mm_convert.dcp import save_lazily
        from mm_convert.output import atomic_dir
        from mm_core.checkpoint.hf import HFReader
        from mm_core.checkpoint.mm_dir import write_latest

        experts, layers = _moe_layout(hf_dir)
        reader = HFReader(hf_dir)
        merged = _merge_plan(reader.order, experts, layers, hf_dir)
        metas: dict[str, torch.Tensor] = {}
        make: dict[str, Callable[..., torch.Tensor]] = {}
        chunk_rows: dict[str, int] = {}
        for key, (op, parts) in merged.items():
            shapes = [tuple(reader.infos[p].meta().shape) for p in parts]
            e, rows, cols = op.forward_shape(shapes)
            metas[DCP_PREFIX + key] = torch.empty(e * rows, cols, dtype=reader.infos[parts[0]].meta().dtype,
                                                  device="meta")
            fqn = f"{STATE_KEY}.{DCP_PREFIX}{key}"
            chunk_rows[fqn] = rows  # written one expert at a time: the merged tensor never exists whole
            per = op.arity // e
            one = type(op)(1)  # the same transform for a single expert
            make[fqn] = lambda block, parts=parts, per=per, one=one: one.forward(
                [reader.read(p) for p in parts[block * per:(block + 1) * per]])[0].contiguous()
        budget = block_bytes(block_mb)
        for key in reader.order:
            if not EXPERT.match(key):
                fqn = f"{STATE_KEY}.{DCP_PREFIX}{key}"
                metas[DCP_PREFIX + key] = m = reader.infos[key].meta()
                rows = large_rows(m, budget)
                if rows is None:
                    make[fqn] = lambda key=key: reader.read(key)
                    continue
                chunk_rows[fqn] = rows  # the word embedding / output layer (1.24 GB): row blocks, never whole
                make[fqn] = lambda block, key=key, rows=rows, n=m.shape[0]: reader.read(
                    key, (block * rows, min(n, (block + 1) * rows)))
        with atomic_dir(save_dir, overwrite, "--overwrite") as tmp:
            save_lazily({STATE_KEY: metas, "checkpoint_version": CHECKPOINT_VERSION}, make, tmp / "release",
                        chunk_rows=chunk_rows)
            write_latest(tmp, "release")

    def dcp_to_hf(self, hf_dir: str, dcp_dir: str, save_dir: str, overwrite: bool = False,
                  trust_remote_code: bool = False, max_shard_size_gb: float = 4.0, block_mb: float = 256.0) -> None:
        """Write a merged-expert DCP checkpoint (e.g. ``save_dir/release``), or one saved by ``mm-run
        finetune`` (``save_dir/iter_0000100``), back as an HF directory.

        Args:
            hf_dir: the original HF directory (config.json, tokenizer and processor files are copied)
            dcp_dir: the DCP directory, or the save dir whose latest_checkpointed_iteration.txt names it
            save_dir: output HF directory
            overwrite: replace a non-empty save_dir
            trust_remote_code: accepted for the reference's command line; nothing runs model code
            max_shard_size_gb: largest safetensors shard (a tensor is never cut)
            block_mb: how much of a merged expert tensor is read at a time
        """
        budget = block_bytes(block_mb)
        from mm_convert.output import atomic_dir, check_target
        from mm_core.checkpoint.hf import HFWriter, copy_aux_files

        if _trained_by_mm(dcp_dir):
            _engine_dcp_to_hf(hf_dir, dcp_dir, save_dir, overwrite, max_shard_size_gb)
            return
        experts, layers = _moe_layout(hf_dir)
        source = _DcpTensors(dcp_dir)
        specs: dict[str, tuple[tuple[int, ...], torch.dtype]] = {}
        plan: list[tuple[str, Any, list[str]]] = []  # (stored key, op or None, HF keys)
        for key in source.keys():
            m = source.meta(key)
            found = re.match(r"^model\.language_model\.layers\.(\d+)\.mlp\.experts\.(gate_up|down)_proj$", key)
            if found is None:
                specs[key] = (tuple(m.shape), m.dtype)
                plan.append((key, None, [key]))
                continue
            layer, kind = int(found.group(1)), found.group(2)
            if layer not in layers:
                raise ConversionError(f"{source.dir}: {key} is stored but layer {layer} is not an MoE layer of "
                                      f"{hf_dir}/config.json (first_k_dense_replace {layers.start})")
            op = StackGateUp(experts) if kind == "gate_up" else StackDown(experts)
            rows, cols = m.shape
            if rows % experts:
                raise ConversionError(f"{source.dir}: {key} {tuple(m.shape)} has no {experts} equal expert blocks")
            names = [f"{LAYER.format(layer=layer)}{e}.{p}_proj.weight" for e in range(experts)
                     for p in (("gate", "up") if kind == "gate_up" else ("down",))]
            for name, shape in zip(names, op.inverse_shapes((experts, rows // experts, cols))):
                specs[name] = (tuple(shape), m.dtype)
            plan.append((key, op, names))
        check_target(save_dir, overwrite, "--overwrite")
        with atomic_dir(save_dir, overwrite, "--overwrite") as tmp:
            copy_aux_files(hf_dir, tmp)
            writer = HFWriter(tmp, specs, max_shard_bytes=int(max_shard_size_gb * 1024**3))
            try:
                for key, op, names in plan:
                    meta = source.meta(key)
                    if op is None:
                        rows_per = large_rows(meta, budget, source.block_rows(key))
                        if rows_per is None:  # small, or stored in one chunk (a read inside it loads it all)
                            writer.write(names[0], source.load(key))
                            continue
                        for a, b in row_blocks(meta.shape[0], rows_per):  # the word embedding a block at a time
                            writer.write_rows(names[0], source.load_rows(key, a, b), a)
                        continue
                    rows = meta.shape[0] // experts
                    # at least the stored chunk's experts: a read inside a chunk loads all of it
                    least = -(-source.block_rows(key) // rows)
                    group = max(1, least, min(experts, budget // max(1, rows * meta.shape[1] * meta.element_size())))
                    group = min(experts, group)
                    per = len(names) // experts
                    for first in range(0, experts, group):  # a few experts at a time, never the merged tensor
                        n = min(group, experts - first)
                        block = source.load_rows(key, first * rows, (first + n) * rows)
                        pieces = type(op)(n).inverse(block.view(n, rows, meta.shape[1]))
                        for name, piece in zip(names[first * per:(first + n) * per], pieces):
                            writer.write(name, piece)
                writer.close()
            except BaseException:
                writer.abort()
                raise


def _trained_by_mm(dcp_dir: str | Path) -> bool:
    """Whether the checkpoint holds mm names (mm's trainer) rather than this layout's ``model.model.*``."""
    import torch.distributed.checkpoint as dcp

    from mm_core.checkpoint.mm_dir import resolve_dcp_dir

    names = dcp.FileSystemReader(str(resolve_dcp_dir(dcp_dir))).read_metadata().state_dict_metadata
    head = f"{STATE_KEY}.{DCP_PREFIX}"
    return not any(k.startswith(head) for k in names) and any(k.startswith(f"{STATE_KEY}.") for k in names)


def _engine_dcp_to_hf(hf_dir: str, dcp_dir: str, save_dir: str, overwrite: bool, max_shard_size_gb: float) -> None:
    """A trainer checkpoint through GlmConverter's rules (the model's weights only; optimizer state is skipped)."""
    from mm_convert import engine
    from mm_convert.config import DcpToHfConfig
    from mm_glm.convert import GlmConverter

    engine.dcp_to_hf(GlmConverter(), DcpToHfConfig(hf_dir=hf_dir, dcp_dir=dcp_dir, save_dir=save_dir,
                                                   overwrite=overwrite, max_shard_size_gb=max_shard_size_gb))


def _merge_plan(order: list[str], experts: int, layers: range, hf_dir: str | Path
                ) -> dict[str, tuple[Any, list[str]]]:
    """``{merged key: (transform, per-expert HF keys in its order)}``; missing experts named."""
    present = set(order)
    out: dict[str, tuple[Any, list[str]]] = {}
    stray = [k for k in order if (m := EXPERT.match(k)) and (int(m.group(1)) not in layers or int(m.group(2)) >= experts)]
    if stray:
        raise ConversionError(f"{hf_dir}: expert tensors outside config.json's MoE layers/experts, e.g. {stray[:3]}")
    for layer in layers:
        prefix = LAYER.format(layer=layer)
        gate_up = [f"{prefix}{e}.{p}_proj.weight" for e in range(experts) for p in ("gate", "up")]
        down = [f"{prefix}{e}.down_proj.weight" for e in range(experts)]
        missing = [k for k in gate_up + down if k not in present]
        if missing:
            raise ConversionError(f"{hf_dir}: layer {layer} lacks {len(missing)} expert tensor(s), e.g. {missing[:3]}; "
                                  "check that config.json (n_routed_experts, first_k_dense_replace) fits the weights")
        out[prefix + "gate_up_proj"] = (StackGateUp(experts), gate_up)
        out[prefix + "down_proj"] = (StackDown(experts), down)
    return out


class _DcpTensors:
    """The ``model`` tensors of a reference-layout DCP checkpoint, by HF key (prefixes stripped)."""

    def __init__(self, dcp_dir: str | Path):
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.metadata import TensorStorageMetadata

        from mm_core.checkpoint.mm_dir import resolve_dcp_dir

        self.dir = resolve_dcp_dir(dcp_dir)
        md = dcp.FileSystemReader(str(self.dir)).read_metadata()
        head = f"{STATE_KEY}.{DCP_PREFIX}"
        self.stored = {k[len(head):]: k for k, v in md.state_dict_metadata.items()
                       if isinstance(v, TensorStorageMetadata) and k.startswith(head)}
        self.metas = {k: md.state_dict_metadata[v] for k, v in self.stored.items()}
        self.chunk = {k: max((c.sizes[0] for c in m.chunks), default=0) if len(m.size) else 0
                      for k, m in self.metas.items()}  # rows of the largest stored chunk
        if not self.stored:
            raise ConversionError(f"{self.dir}: no tensors named '{head}...' (ExpertMergeDcpConverter's layout) "
                                  "nor mm names (a checkpoint of mm's trainer); it is not a GLM checkpoint")

    def keys(self) -> list[str]:
        return list(self.stored)

    def meta(self, key: str) -> torch.Tensor:
        m = self.metas[key]
        return torch.empty(tuple(m.size), dtype=m.properties.dtype, device="meta")

    def block_rows(self, key: str) -> int:
        """Rows of ``key``'s largest stored chunk: reading fewer still loads all of them."""
        return max(1, self.chunk[key])

    def load(self, key: str) -> torch.Tensor:
        import warnings

        import torch.distributed.checkpoint as dcp

        m = self.meta(key)
        buf = {self.stored[key]: torch.empty(m.shape, dtype=m.dtype)}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "no process group: running as a single process"
            dcp.load(buf, storage_reader=dcp.FileSystemReader(str(self.dir)), no_dist=True)
        return buf[self.stored[key]]

    def load_rows(self, key: str, start: int, stop: int) -> torch.Tensor:
        from mm_convert.dcp_chunks import load_rows

        return load_rows(self.dir, self.stored[key], start, stop, self.meta(key))

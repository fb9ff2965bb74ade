"""Build any registered family's model (or one pipeline stage) and load it from an HF or mm directory.

The family is found from the HF ``config.json`` through the plugin registry; its converter (from
mm-convert, which every family package depends on) streams each rank's share of an HF checkpoint
through the conversion rules, or reads the rank's ``mp_rank`` file of an mm checkpoint.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mm_core.family.hf_config import config_file, read_hf_config
from mm_core.nn.state import CheckpointMismatchError, assign_state


def is_mm_dir(path: str | Path) -> bool:
    return (Path(path) / "latest_checkpointed_iteration.txt").is_file()


def is_hf_dir(path: str | Path) -> bool:
    p = Path(path)
    return (p / "config.json").is_file() and any(p.glob("*.safetensors"))


def _api():
    from mm_core.checkpoint import api

    return api


def _compact(x: Any) -> str:
    return str(list(x)).replace(" ", "")


def layout_flags(tp_size: int, vit_pp_layers: Sequence | None, llm_pp_layers: Sequence | None) -> str:
    """The ``--cfg.parallel_config.*`` flags of mm-convert for a layout (for error messages)."""
    flags = [f"--cfg.parallel_config.tp_size {tp_size}"]
    if llm_pp_layers is not None:
        flags.append(f"--cfg.parallel_config.llm_pp_layers {_compact(llm_pp_layers)}")
    if vit_pp_layers is not None:
        flags.append(f"--cfg.parallel_config.vit_pp_layers {_compact(vit_pp_layers)}")
    return " ".join(flags)


def rank_and_chunk(stage: int, vit_pp_layers: Sequence | None, llm_pp_layers: Sequence | None
                    ) -> tuple[int, int | None]:
    """Flattened stage -> (pp rank, virtual chunk or None): chunk v of rank p is stage ``v * pp + p``."""
    layers = llm_pp_layers if llm_pp_layers is not None else vit_pp_layers
    if layers is None or not any(isinstance(x, (list, tuple)) for x in layers):
        return stage, None
    pp = len(layers[0])
    return stage % pp, stage // pp


def _flat(x: Sequence) -> list:
    return [y for item in x for y in (item if isinstance(item, (list, tuple)) else [item])]


def load_hf_weights(model: nn.Module, hf_dir: str | Path, converter_name: str, *, tp_size: int = 1, tp_rank: int = 0,
                    vit_pp_layers: Sequence | None = None, llm_pp_layers: Sequence | None = None,
                    pp_rank: int = 0) -> None:
    """Stream this rank's share of an HF checkpoint through the family's converter into ``model``."""
    from mm_core.plugins import get_plugin_manager

    converter = get_plugin_manager().converter(converter_name).factory()
    rank, chunk = rank_and_chunk(pp_rank, vit_pp_layers, llm_pp_layers)
    state = _api().hf_to_mm_rank(converter, hf_dir, tp_size=tp_size, tp_rank=tp_rank, vit_pp_layers=vit_pp_layers,
                                 llm_pp_layers=llm_pp_layers, pp_rank=rank)
    state = state[chunk] if chunk is not None else state
    assign_state(model, state, source=f"HF checkpoint {hf_dir} (tp rank {tp_rank}/{tp_size}, pp stage {pp_rank})",
                 fix=f"check that {hf_dir}/config.json belongs to these weights and that the layout "
                     f"({layout_flags(tp_size, vit_pp_layers, llm_pp_layers)}) matches the model you built")


def check_mm_layout(mm_dir: str | Path, converter_name: str, *, tp_size: int = 1,
                    vit_pp_layers: Sequence | None = None, llm_pp_layers: Sequence | None = None) -> str:
    """Refuse an mm checkpoint written for another tp size or stage split (naming both); returns
    the resplit command that fixes a mismatch (for later errors)."""
    fix = (f"re-split the checkpoint for this layout: mm-convert {converter_name} resplit --cfg.mm_dir {mm_dir} "
           f"--cfg.save_dir <new mm dir> {layout_flags(tp_size, vit_pp_layers, llm_pp_layers)}")
    layout = _api().read_mm_layout(mm_dir)
    get = (lambda k: layout.get(k)) if isinstance(layout, Mapping) else (lambda k: getattr(layout, k, None))
    saved_tp, saved_pp = get("tp_size"), get("pp_size")
    layers = llm_pp_layers if llm_pp_layers is not None else vit_pp_layers
    want_pp = len(_flat(layers)) if layers is not None else 1
    if saved_pp is not None:
        saved_pp = saved_pp * (get("vpp_size") or 1)  # flattened stages
    if (saved_tp is not None and saved_tp != tp_size) or (saved_pp is not None and saved_pp != want_pp):
        raise CheckpointMismatchError(
            f"{mm_dir} holds a tp={saved_tp}, pp={get('pp_size')} checkpoint but the model is built for "
            f"tp={tp_size} with {want_pp} pipeline stage(s).\n  fix: {fix}")
    for key, want in (("vit_pp_layers", vit_pp_layers), ("llm_pp_layers", llm_pp_layers)):
        saved = get(key)
        if want is not None and saved is not None and _flat(saved) != _flat(want):
            raise CheckpointMismatchError(
                f"{mm_dir} was written with {key}={_compact(saved)} but the model is built with "
                f"{_compact(want)}.\n  fix: {fix}")
    return fix


def load_mm_weights(model: nn.Module, mm_dir: str | Path, converter_name: str, *, tp_size: int = 1,
                    tp_rank: int = 0, vit_pp_layers: Sequence | None = None,
                    llm_pp_layers: Sequence | None = None, pp_rank: int = 0,
                    iteration: int | str | None = None) -> None:
    """Read this rank's ``mp_rank`` file of an mm checkpoint into ``model``."""
    fix = check_mm_layout(mm_dir, converter_name, tp_size=tp_size, vit_pp_layers=vit_pp_layers,
                          llm_pp_layers=llm_pp_layers)
    rank, chunk = rank_and_chunk(pp_rank, vit_pp_layers, llm_pp_layers)
    state, _ = _api().read_mm_rank(mm_dir, tp_rank=tp_rank, pp_rank=rank, iteration=iteration)
    state = state[chunk] if chunk is not None else state
    assign_state(model, state, source=f"mm checkpoint {mm_dir} (tp rank {tp_rank}, pp stage {pp_rank})", fix=fix)


@dataclass
class FileTensor:
    """One tensor of an mm rank file, read on demand (whole, or rows of dim 0 only)."""

    key: str
    file: Any  # mm_core.checkpoint.mm_dir.RankFile
    chunk: int

    @property
    def meta(self) -> torch.Tensor:
        return self.file.meta(self.key, self.chunk)

    @property
    def partial(self) -> bool:  # rows of our safetensors files are read alone; a .pt file is loaded whole
        return self.file.info(self.key, self.chunk) is not None

    def read(self, rows: tuple[int, int] | None = None) -> torch.Tensor:
        from mm_core.checkpoint.safetensors_io import read_tensor

        info = self.file.info(self.key, self.chunk)
        if info is not None:
            return read_tensor(info, rows)
        whole = self.file.read(self.key, self.chunk)
        return whole if rows is None else whole[rows[0]:rows[1]]


def mm_stage_tensors(mm_dir: str | Path, *, tp_rank: int, stage: int, vit_pp_layers: Sequence | None,
                     llm_pp_layers: Sequence | None) -> list[FileTensor]:
    """The tensors of stage ``stage`` in this tp rank's file of an mm checkpoint (not yet read)."""
    rank, chunk = rank_and_chunk(stage, vit_pp_layers, llm_pp_layers)
    f, _ = _api().open_mm_rank(mm_dir, tp_rank=tp_rank, pp_rank=rank)
    v = chunk or 0
    return [FileTensor(k, f, v) for k in sorted(f.keys(v))]


def resolve_hf_config(path: str | Path, hf_config: Any = None) -> tuple[dict[str, Any], Path | None]:
    """The HF config dict for a model directory and the file it came from (None for a dict):
    ``hf_config`` when given (a dict, a config.json or an HF dir), else the directory's config.json."""
    path = Path(path)
    if not (is_mm_dir(path) or is_hf_dir(path)):
        raise CheckpointMismatchError(
            f"{path} is neither an HF model directory (config.json + *.safetensors) nor an mm checkpoint "
            f"(latest_checkpointed_iteration.txt)")
    if isinstance(hf_config, Mapping):
        return dict(hf_config), None
    file = config_file(hf_config if hf_config is not None else path)
    if not file.is_file():
        raise CheckpointMismatchError(
            f"hf_config {hf_config}: no config.json there" if hf_config is not None else
            f"{path} is an mm checkpoint without config.json; pass the original HF directory "
            f"(hf_config=..., or --processor <hf dir> for mm-run infer)")
    return read_hf_config(file)[0], file


def load_pretrained(path: str | Path, *, hf_config: Any = None, tp_size: int = 1, tp_rank: int = 0,
                    vit_pp_layers: Sequence | None = None, llm_pp_layers: Sequence | None = None,
                    pp_rank: int = 0, device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
                    iteration: int | str | None = None) -> nn.Module:
    """Build on meta (never materialising the model twice) and load from an HF dir or an mm dir."""
    from mm_core.plugins import get_plugin_manager

    config, config_file = resolve_hf_config(path, hf_config)
    spec = get_plugin_manager().model_for_hf_config(config, source=str(config_file or path))
    model = spec.builder(config_file or config, vit_pp_layers=vit_pp_layers, llm_pp_layers=llm_pp_layers, pp_rank=pp_rank,
                         device="meta", dtype=dtype)
    if spec.converter is None:
        raise CheckpointMismatchError(f"model '{spec.name}' registers no converter, so it cannot load {path}")
    if is_mm_dir(path):
        load_mm_weights(model, path, spec.converter, tp_size=tp_size, tp_rank=tp_rank, vit_pp_layers=vit_pp_layers,
                        llm_pp_layers=llm_pp_layers, pp_rank=pp_rank, iteration=iteration)
    else:
        load_hf_weights(model, path, spec.converter, tp_size=tp_size, tp_rank=tp_rank, vit_pp_layers=vit_pp_layers,
                        llm_pp_layers=llm_pp_layers, pp_rank=pp_rank)
    model.to(device=device)
    if dtype is not None:
        model.to(dtype=dtype)
    return model

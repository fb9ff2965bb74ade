"""The mm layout on disk: ``latest_checkpointed_iteration.txt``, ``release/`` or ``iter_%07d/``,
then ``mp_rank_TT`` (``_PPP`` when pp > 1), each holding one rank's weights with local layer numbers.

Our rank files are safetensors: ``model.safetensors`` (``model{v}.safetensors`` per virtual chunk
when the layer lists are nested). MindSpeed-MM rank files (``model_optim_rng.pt``: ``{'model': ...}``
or ``model0``, ``model1``, ... with virtual chunks) are read with ``weights_only=True``.
The layout is recorded in ``mm_layout.json`` next to the rank directories; for directories
without one (MindSpeed-MM), it is inferred from the rank files.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from mm_core.checkpoint.errors import ConversionError
from mm_core.checkpoint.safetensors_io import TensorInfo, read_header, read_tensor
from mm_core.layout import LAYOUT_FILE, Layout

LATEST = "latest_checkpointed_iteration.txt"
RANK_RE = re.compile(r"^mp_rank_(\d{2})(?:_(\d{3}))?$")
MS_FILE = "model_optim_rng.pt"


def iteration_dir_name(iteration: int | str | None) -> str:
    if iteration is None or str(iteration) == "release":
        return "release"
    s = str(iteration)
    if s.startswith("iter_"):
        return s
    return f"iter_{int(s):07d}"


def resolve_iteration_dir(mm_dir: str | Path, iteration: int | str | None = None) -> Path:
    """The directory of one saved iteration: named, else the latest, else ``mm_dir`` itself when it
    already is an iteration directory (``.../iter_0000100`` or ``.../release``)."""
    d = Path(mm_dir)
    if not d.is_dir():
        raise ConversionError(f"mm directory {d} does not exist")
    if iteration is not None:
        sub = d / iteration_dir_name(iteration)
        if not sub.is_dir():
            raise ConversionError(f"{d} has no {sub.name}/ (iteration {iteration})")
        return sub
    latest = d / LATEST
    if latest.is_file():
        value = latest.read_text().strip()
        sub = d / iteration_dir_name(value)
        if not sub.is_dir():
            raise ConversionError(f"{latest} says '{value}' but {sub} does not exist")
        return sub
    if d.name == "release" or re.fullmatch(r"iter_\d{7}", d.name) or any(RANK_RE.match(p.name) for p in d.iterdir()):
        return d
    raise ConversionError(f"{d} is not an mm checkpoint: no {LATEST} and no mp_rank_* directories")


def rank_dir_name(tp_rank: int, pp_rank: int, pp_size: int) -> str:
    return f"mp_rank_{tp_rank:02d}" + (f"_{pp_rank:03d}" if pp_size > 1 else "")


def chunk_file_name(chunk: int, nested: bool) -> str:
    return f"model{chunk}.safetensors" if nested else "model.safetensors"


def rank_dirs(it_dir: Path) -> dict[tuple[int, int], Path]:
    out = {}
    for p in it_dir.iterdir():
        m = RANK_RE.match(p.name)
        if m and p.is_dir():
            out[(int(m.group(1)), int(m.group(2) or 0))] = p
    return out


class RankFile:
    """One rank's tensors (one dict per virtual chunk), read lazily tensor by tensor."""

    def __init__(self, rank_dir: Path):
        self.dir = rank_dir
        ours = sorted(rank_dir.glob("model*.safetensors"))
        self._pt: list[dict[str, torch.Tensor]] | None = None
        self._st: list[dict[str, TensorInfo]] | None = None
        if ours:
            by_chunk: dict[int, Path] = {}
            for p in ours:
                m = re.fullmatch(r"model(\d*)\.safetensors", p.name)
                if m:
                    by_chunk[int(m.group(1) or 0)] = p
            self.nested = not (rank_dir / "model.safetensors").is_file()
            self._st = [read_header(by_chunk[v])[0] for v in sorted(by_chunk)]
        elif (rank_dir / MS_FILE).is_file():
            self._pt, self.nested = _load_mindspeed(rank_dir / MS_FILE)
        else:
            raise ConversionError(f"{rank_dir} holds neither model*.safetensors nor {MS_FILE}")

    @property
    def chunks(self) -> int:
        return len(self._st if self._st is not None else self._pt)  # type: ignore[arg-type]

    def keys(self, chunk: int = 0) -> set[str]:
        src = self._st if self._st is not None else self._pt
        return set(src[chunk])  # type: ignore[index]

    def meta(self, key: str, chunk: int = 0) -> torch.Tensor:
        if self._st is not None:
            return self._st[chunk][key].meta()
        t = self._pt[chunk][key]  # type: ignore[index]
        return torch.empty(t.shape, dtype=t.dtype, device="meta")

    def info(self, key: str, chunk: int = 0) -> TensorInfo | None:
        """Where a tensor lies in our safetensors rank file (None for .pt files)."""
        return self._st[chunk][key] if self._st is not None else None

    def read(self, key: str, chunk: int = 0) -> torch.Tensor:
        if self._st is not None:
            return read_tensor(self._st[chunk][key])
        return self._pt[chunk][key].clone()  # type: ignore[index]

    def state(self, chunk: int = 0) -> dict[str, torch.Tensor]:
        return {k: self.read(k, chunk) for k in sorted(self.keys(chunk))}


def _load_mindspeed(path: Path) -> tuple[list[dict[str, torch.Tensor]], bool]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # noqa: BLE001 - the message must name the file
        raise ConversionError(f"cannot read {path} with weights_only=True ({type(e).__name__}: {e}); only plain "
                              f"tensor checkpoints are accepted, never arbitrary pickles") from e
    if not isinstance(obj, Mapping):
        raise ConversionError(f"{path} holds a {type(obj).__name__}, expected a dict with 'model'")
    if "model" in obj:
        chunks, nested = [obj["model"]], False
    else:
        names = sorted((k for k in obj if re.fullmatch(r"model\d+", str(k))), key=lambda k: int(k[5:]))
        if not names:
            raise ConversionError(f"{path} has neither 'model' nor 'model0', 'model1', ...: keys {sorted(obj)[:8]}")
        chunks, nested = [obj[n] for n in names], True
    clean = [{k: v for k, v in c.items() if isinstance(v, torch.Tensor) and not k.endswith("_extra_state")}
             for c in chunks]
    return clean, nested


def write_latest(mm_dir: Path, iteration: int | str | None) -> None:
    name = iteration_dir_name(iteration)
    (mm_dir / LATEST).write_text(("release" if name == "release" else str(int(name[5:]))) + "\n")


def read_layout(mm_dir: str | Path, iteration: int | str | None = None,
                layer_prefixes: Mapping[str, str] | None = None) -> Layout:
    """The recorded layout, or one inferred from the rank files (MindSpeed-MM directories).

    ``layer_prefixes``: module -> mm key prefix of its layers (``text_decoder.decoder.layers.``),
    needed only to infer per-stage layer counts.
    """
    it_dir = resolve_iteration_dir(mm_dir, iteration)
    for cand in (it_dir / LAYOUT_FILE, Path(mm_dir) / LAYOUT_FILE):
        if cand.is_file():
            return Layout.from_json(cand)
    ranks = rank_dirs(it_dir)
    if not ranks:
        raise ConversionError(f"{it_dir} has no mp_rank_* directories")
    tps = sorted({t for t, _ in ranks})
    pps = sorted({p for _, p in ranks})
    if tps != list(range(len(tps))) or pps != list(range(len(pps))) or len(ranks) != len(tps) * len(pps):
        raise ConversionError(f"{it_dir}: rank directories are incomplete (tp ranks {tps}, pp ranks {pps})")
    layout = Layout(tp_size=len(tps), pp_size=len(pps))
    if layer_prefixes:
        files = [RankFile(ranks[(0, p)]) for p in pps]
        vpp = files[0].chunks
        nested = files[0].nested
        layout.vpp_size = vpp
        for module, prefix in layer_prefixes.items():
            counts = [[_count_layers(files[p].keys(v), prefix) for p in pps] for v in range(vpp)]
            value: list[Any] = counts if nested else counts[0]
            if module in ("vit", "llm"):
                setattr(layout, f"{module}_pp_layers", value)
            else:
                layout.extra[f"{module}_pp_layers"] = value
    return layout


def _count_layers(keys: Sequence[str] | set[str], prefix: str) -> int:
    nums = {int(k[len(prefix):].split(".", 1)[0]) for k in keys if k.startswith(prefix)}
    return (max(nums) + 1) if nums else 0


def resolve_dcp_dir(path: str | Path) -> Path:
    """A directory holding ``.metadata``: given directly, or via ``latest_checkpointed_iteration.txt``."""
    p = Path(path)
    if (p / ".metadata").is_file():
        return p
    latest = p / LATEST
    if latest.is_file():
        sub = p / iteration_dir_name(latest.read_text().strip())
        if (sub / ".metadata").is_file():
            return sub
    raise ConversionError(f"{p} is not a DCP checkpoint (no .metadata) nor a save dir whose {LATEST} names one")

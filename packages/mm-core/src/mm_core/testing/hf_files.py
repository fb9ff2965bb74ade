"""Reading HF directories and DCP checkpoints back for byte-for-byte comparisons."""

from __future__ import annotations

from pathlib import Path

import torch


def read_safetensors_dir(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of every ``*.safetensors`` file of an HF directory (read with safetensors itself,
    so what mm-convert writes must load in the reference reader)."""
    from safetensors import safe_open

    out: dict[str, torch.Tensor] = {}
    for f in sorted(Path(path).glob("*.safetensors")):
        with safe_open(f, "pt") as s:
            out.update({k: s.get_tensor(k) for k in s.keys()})
    return out


def assert_same_hf_dirs(expected: Path, got: Path) -> None:
    """Same keys, dtypes and bits; config.json copied unchanged."""
    a, b = read_safetensors_dir(expected), read_safetensors_dir(got)
    assert a.keys() == b.keys(), f"keys differ: only in {expected.name}: {sorted(set(a) - set(b))[:5]}, " \
                                 f"only in {got.name}: {sorted(set(b) - set(a))[:5]}"
    for k in a:
        assert a[k].dtype == b[k].dtype, f"{k}: {a[k].dtype} became {b[k].dtype}"
        assert torch.equal(a[k], b[k]), f"{k}: values differ"
    assert (Path(got) / "config.json").read_bytes() == (Path(expected) / "config.json").read_bytes()


def read_dcp_model(path: Path) -> dict[str, torch.Tensor]:
    """The ``model`` entries of a DCP checkpoint directory (whole tensors, global mm names)."""
    import tempfile

    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    with tempfile.TemporaryDirectory() as tmp:
        dcp_to_torch_save(str(path), f"{tmp}/state.pt")
        state = torch.load(f"{tmp}/state.pt", weights_only=False)
    if isinstance(state.get("model"), dict):
        return dict(state["model"])
    return {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}

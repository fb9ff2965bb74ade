"""What the seed's GLM-4.5V flow (``ExpertMergeDcpConverter hf_to_dcp`` -> ``mm-run finetune`` with
``output.load`` on it -> ``dcp_to_hf`` of the saved iteration) must give, as one check the tests
share (the one-process run and the README's multi-process quick start).

- The HF output holds exactly the trained weights: bit-equal to the trainer's checkpoint, read back
  through the converter's rules, and each expert checked by its own formula (the Hub's
  ``gate``/``up``/``down`` are ``weight1[e]``'s / ``weight2[e]``'s transposed halves).
- Frozen tensors (and the router's score-correction bias, never trained by gradient) are bit-equal
  to the original Hub tensors.
- Trained tensors moved from the original by no more than AdamW allows: each step moves a weight by
  at most about ``lr`` (``|m_hat / sqrt(v_hat)| <= 1.002`` in the first two steps, plus the
  decay), so weights the trainer did not load from the converted checkpoint fail it.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import torch


def hf_tensors(d: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor of an HF directory's safetensors files (copies: the files may be replaced later)."""
    from safetensors import safe_open

    out = {}
    for f in sorted(Path(d).glob("*.safetensors")):
        with safe_open(str(f), "pt") as s:
            out.update({k: s.get_tensor(k).clone() for k in s.keys()})
    return out


def engine_weights(iter_dir: str | Path) -> dict[str, torch.Tensor]:
    """The model weights (mm names) of a checkpoint saved by mm's trainer; optimizer state is not read."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    md = dcp.FileSystemReader(str(iter_dir)).read_metadata().state_dict_metadata
    buf = {k: torch.empty(tuple(v.size), dtype=v.properties.dtype) for k, v in md.items()
           if k.startswith("model.") and isinstance(v, TensorStorageMetadata)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.load(buf, storage_reader=dcp.FileSystemReader(str(iter_dir)), no_dist=True)
    return {k[len("model."):]: v for k, v in buf.items()}


def check_seed_flow(hf_out: str | Path, iter_dir: str | Path, original: dict[str, torch.Tensor],
                    frozen: Sequence[str], lr: float, steps: int) -> list[str]:
    """Assert the module docstring's conditions; returns the names of the tensors training changed."""
    from mm_core.checkpoint.api import hf_to_mm_rank

    out, engine = hf_tensors(hf_out), engine_weights(iter_dir)
    assert sorted(out) == sorted(original), sorted(set(out) ^ set(original))[:5]
    back = hf_to_mm_rank("GlmConverter", hf_out)
    assert sorted(back) == sorted(engine), sorted(set(back) ^ set(engine))[:5]
    for k, t in engine.items():
        assert back[k].dtype == t.dtype and torch.equal(back[k], t), f"{k}: the HF output is not the trained weight"
    experts = [k for k in engine if k.endswith("mlp.experts.weight1")]
    assert experts, "no MoE layer in the checkpoint"
    for k in experts:  # the Hub's per-expert tensors by their own formula
        layer = int(k.split(".layers.", 1)[1].split(".", 1)[0])
        w1, w2 = engine[k], engine[k.replace("weight1", "weight2")]
        i = w1.shape[2] // 2
        for e in range(w1.shape[0]):
            hub = f"model.language_model.layers.{layer}.mlp.experts.{e}."
            assert torch.equal(out[hub + "gate_proj.weight"], w1[e, :, :i].t()), hub
            assert torch.equal(out[hub + "up_proj.weight"], w1[e, :, i:].t()), hub
            assert torch.equal(out[hub + "down_proj.weight"], w2[e].t()), hub
    bound = steps * lr * 1.01 + 1e-7  # AdamW: <= ~lr a step in the first steps (+ decay, tiny here)
    changed = []
    for k, t in original.items():
        if any(k.startswith(p) for p in frozen) or k.endswith("e_score_correction_bias"):
            assert torch.equal(out[k], t), f"{k}: frozen, but differs from the original HF tensor"
            continue
        moved = (out[k].double() - t.double()).abs().max().item()
        assert moved <= bound, f"{k}: moved {moved:.3g} from the original, more than {steps} AdamW steps allow"
        if moved:
            changed.append(k)
    assert changed, "training changed nothing"
    return changed

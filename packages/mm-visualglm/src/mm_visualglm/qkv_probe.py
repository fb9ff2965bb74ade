"""Which q/k/v row order a SAT checkpoint's LM has, told by its logits on a probe input.

SAT switched ChatGLM's fused q/k/v from the per-head interleave to contiguous thirds on 2023-07-12
and nothing in ``model_config.json`` says which a copy has. The LM (text only, no image) is run with
each order on the probe tokens; the order under which it predicts the probe's next tokens better
(lower cross-entropy) is the one it was trained with. Too close a call is refused, naming the flag.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from mm_core.checkpoint.errors import ConfigError

PROBE_TEXT = "问：图片里有什么？\n答：一只猫坐在窗台上，阳光照在它身上。The quick brown fox jumps over the lazy dog."
MARGIN = 0.9  # the better order's loss must be below 90% of the other's


def probe_loss(weights: Mapping[str, torch.Tensor], hf_config: Mapping[str, Any], order: str, ids: list[int]) -> float:
    """Mean next-token cross-entropy of the probe under one order (the LM alone, in fp32)."""
    from mm_visualglm.model import build_model
    from mm_visualglm.sources import source_to_mm

    state = source_to_mm(weights, hf_config, "sat", order)
    model = build_model(dict(hf_config), device="meta")
    model.load_state_dict({k: v.float() for k, v in state.items()}, assign=True)
    x = torch.tensor([ids])
    with torch.no_grad():
        logits = model.eval()(input_ids=x)[0, :-1].float()
    return float(torch.nn.functional.cross_entropy(logits, x[0, 1:]))


def default_probe(src: Path) -> list[int]:
    from mm_visualglm.tokenizer import ChatGLMTokenizer, find_tokenizer_file

    file = find_tokenizer_file(src)
    if file is None:
        raise ConfigError(f"{src}: the LM's q/k/v order is not recorded in a SAT checkpoint and there is no "
                          "ice_text.model to make a probe input from; pass --cfg.qkv_order contiguous (SAT since "
                          "2023-07-12) or interleaved (older copies), or --cfg.probe_ids")
    return ChatGLMTokenizer(file).encode(PROBE_TEXT)


def probe_qkv_order(weights: Mapping[str, torch.Tensor], hf_config: Mapping[str, Any], src: Path,
                    probe_ids: list[int] | None) -> str:
    """``contiguous`` or ``interleaved``, printing both losses; ConfigError when they are too close."""
    ids = list(probe_ids) if probe_ids else default_probe(src)
    if len(ids) < 4:
        raise ConfigError(f"--cfg.probe_ids: {len(ids)} tokens are too few to tell the q/k/v order; give 4 or more")
    losses = {order: probe_loss(weights, hf_config, order, ids) for order in ("contiguous", "interleaved")}
    best = min(losses, key=losses.get)  # type: ignore[arg-type]
    other = "interleaved" if best == "contiguous" else "contiguous"
    shown = ", ".join(f"{o} {v:.4f}" for o, v in losses.items())
    if losses[best] > MARGIN * losses[other]:
        raise ConfigError(f"{src}: the probe cannot tell the LM's q/k/v order (cross-entropy {shown}); pass "
                          "--cfg.qkv_order contiguous or interleaved")
    print(f"[mm-convert] {src}: the LM's q/k/v rows are {best} (probe cross-entropy {shown})", flush=True)
    return best

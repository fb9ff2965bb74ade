"""The numbers the mm VisualGLM-6B modules need, read from either published config file.

VisualGLM-6B ships two configs: SAT's ``model_config.json`` (ChatGLM fields at the top level,
``eva_args`` / ``qformer_args`` for the image encoder) and the HF remote-code ``config.json``
(``model_type`` ``chatglm``, the same ChatGLM fields, ``eva_config`` / ``qformer_config``). The
image encoder's sections use SAT's argument names in both (the HF repository runs SAT code for it),
so one parser reads both. Nothing here runs remote code.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mm_core.errors import ConfigError
from mm_core.family.vision_config import VisionTowerConfig

ARCHITECTURE = "ChatGLMForConditionalGenerationWithImage"
SAT_MODEL_CLASS = "VisualGLMModel"


@dataclass(frozen=True)
class EvaConfig(VisionTowerConfig):
    """EVA-CLIP ViT (SAT ``ViTModel``): CLS + learned positions, pre-LN, no final norm, then ``ln_vision``."""

    image_size: int
    patch_size: int
    in_channels: int
    eps: float  # the blocks' LayerNorms (1e-6)
    ln_vision_eps: float  # ``ln_vision`` (nn.LayerNorm default, 1e-5)

    @property
    def num_positions(self) -> int:
        return (self.image_size // self.patch_size) ** 2 + 1


@dataclass(frozen=True)
class QFormerConfig(VisionTowerConfig):
    """BLIP-2 Q-Former as SAT runs it: learned queries only, post-norm, cross-attention on ``cross_layers``."""

    num_queries: int
    encoder_width: int
    cross_layers: tuple[int, ...]
    eps: float


@dataclass(frozen=True)
class ChatGLMConfig:
    """ChatGLM-6B: LayerNorm, biased linears, 2-D rotary halves, residual scale sqrt(2 x layers)."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    eps: float
    max_sequence_length: int

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def rotary_dim(self) -> int:
        """Each half of a head (position / block position) rotates over head_dim / 2 channels."""
        return self.head_dim // 2

    @property
    def alpha(self) -> float:
        return (2 * self.num_layers) ** 0.5


@dataclass(frozen=True)
class VisualGLMConfig:
    vision: EvaConfig
    qformer: QFormerConfig
    text: ChatGLMConfig
    image_length: int
    bos_token_id: int  # <sop>
    eos_token_id: int  # <eop>
    mask_token_id: int
    gmask_token_id: int
    pad_token_id: int
    image_token_id: int  # the placeholders between <img> and </img>: <unk> (0) as the HF remote code uses
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    tie_word_embeddings = False  # ChatGLM-6B's lm_head is its own weight


def read_config(source: Mapping[str, Any] | str | Path) -> tuple[dict[str, Any], str]:
    """The config dict and where it came from: a dict, a file, or a directory holding ``config.json``
    (HF) or ``model_config.json`` (SAT)."""
    if isinstance(source, Mapping):
        return dict(source), "config"
    path = Path(source)
    if path.is_dir():
        found = [path / n for n in ("config.json", "model_config.json") if (path / n).is_file()]
        if not found:
            raise ConfigError(f"{path} has neither config.json (HF) nor model_config.json (SAT)")
        path = found[0]
    try:
        return json.loads(path.read_text()), str(path)
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path}: cannot read the VisualGLM config ({e})") from e


def _section(hf: Mapping[str, Any], names: tuple[str, ...], source: str) -> dict[str, Any]:
    for n in names:
        if isinstance(hf.get(n), Mapping):
            return dict(hf[n])
    raise ConfigError(f"{source}: no {' / '.join(names)} section; is this a VisualGLM-6B config?")


def _need(d: Mapping[str, Any], key: str, source: str, where: str) -> Any:
    if key not in d:
        raise ConfigError(f"{source}: {where}{key} is missing")
    return d[key]


def _size(x: Any) -> int:
    if isinstance(x, (list, tuple)):
        if len(set(x)) != 1:
            raise ConfigError(f"image_size {list(x)} must be square")
        x = x[0]
    return int(x)


def parse_config(hf_config: Mapping[str, Any] | str | Path) -> VisualGLMConfig:
    """Parse an HF (``config.json``) or SAT (``model_config.json``) VisualGLM-6B config."""
    hf, source = read_config(hf_config)
    eva = _section(hf, ("eva_config", "eva_args"), source)
    qf = _section(hf, ("qformer_config", "qformer_args"), source)
    if eva.get("use_final_layernorm", False):
        raise ConfigError(f"{source}: eva use_final_layernorm true is not VisualGLM's ViT (it has none)")
    if qf.get("layernorm_order", "post") != "post":
        raise ConfigError(f"{source}: qformer layernorm_order '{qf.get('layernorm_order')}': only 'post' is supported")
    e_hidden = int(_need(eva, "hidden_size", source, "eva."))
    q_depth = int(_need(qf, "num_layers", source, "qformer."))
    decoder = qf.get("is_decoder", [i % 2 == 0 for i in range(q_depth)])
    if isinstance(decoder, bool):
        decoder = [decoder] * q_depth
    if len(decoder) != q_depth:
        raise ConfigError(f"{source}: qformer.is_decoder has {len(decoder)} entries for {q_depth} layers")
    q_hidden = int(_need(qf, "hidden_size", source, "qformer."))
    hidden = int(_need(hf, "hidden_size", source, ""))
    text = ChatGLMConfig(
        vocab_size=int(_need(hf, "vocab_size", source, "")), hidden_size=hidden,
        intermediate_size=int(hf.get("inner_hidden_size") or 4 * hidden),
        num_layers=int(_need(hf, "num_layers", source, "")),
        num_heads=int(_need(hf, "num_attention_heads", source, "")),
        eps=float(hf.get("layernorm_epsilon", 1e-5)), max_sequence_length=int(hf.get("max_sequence_length", 2048)))
    if text.head_dim % 4:
        raise ConfigError(f"{source}: hidden_size / num_attention_heads = {text.head_dim} must be a multiple of 4 "
                          "(two rotary halves, each rotate-half)")
    if hf.get("position_encoding_2d", True) is False:
        raise ConfigError(f"{source}: position_encoding_2d false is not VisualGLM-6B's ChatGLM")
    pad = int(hf.get("pad_token_id", 3))
    return VisualGLMConfig(
        vision=EvaConfig(depth=int(_need(eva, "num_layers", source, "eva.")), hidden_size=e_hidden,
                         intermediate_size=int(eva.get("inner_hidden_size") or 4 * e_hidden),
                         num_heads=int(_need(eva, "num_attention_heads", source, "eva.")),
                         image_size=_size(eva.get("image_size", 224)), patch_size=int(eva.get("patch_size", 14)),
                         in_channels=int(eva.get("in_channels", 3)), eps=float(eva.get("layernorm_epsilon", 1e-6)),
                         ln_vision_eps=float(eva.get("ln_vision_epsilon", 1e-5))),
        qformer=QFormerConfig(depth=q_depth, hidden_size=q_hidden,
                              intermediate_size=int(qf.get("inner_hidden_size") or 4 * q_hidden),
                              num_heads=int(_need(qf, "num_attention_heads", source, "qformer.")),
                              num_queries=int(qf.get("vocab_size", 32)),
                              encoder_width=int(qf.get("cross_attn_hidden_size", e_hidden)),
                              cross_layers=tuple(i for i, d in enumerate(decoder) if d),
                              eps=float(qf.get("layernorm_epsilon", 1e-12))),
        text=text,
        image_length=int(hf.get("image_length", 32)),
        bos_token_id=int(hf.get("bos_token_id", 130004)), eos_token_id=int(hf.get("eos_token_id", 130005)),
        mask_token_id=int(hf.get("mask_token_id", 130000)), gmask_token_id=int(hf.get("gmask_token_id", 130001)),
        pad_token_id=pad, image_token_id=int(hf.get("image_token_id", hf.get("unk_token_id", 0))),
        raw=dict(hf),
    )

"""InternVL's two checkpoint layouts: the original remote-code repositories and transformers' ``-hf`` ones.

The original repositories (``OpenGVLab/InternVL3-8B``) hold an ``InternVLChatModel``: config.json
with ``model_type`` ``internvl_chat``, the language model's fields under ``llm_config`` and
InternViT's under ``vision_config`` (``qkv_bias``, ``qk_normalization``, ``initializer_factor``);
tensors ``vision_model.*`` (fused ``attn.qkv``), ``mlp1.{0,1,3}.*`` and ``language_model.*``. The
``-hf`` repositories hold transformers' ``InternVLForConditionalGeneration``.

mm never runs the remote code: the two config dicts are mapped onto each other here (the same
field renames as transformers' ``convert_internvl_weights_to_hf``), and the converter keeps one
rule table per layout. Reading a layout and writing it back copies config.json unchanged; these
functions are used only when the user asks for the other layout, or to build our modules from a
remote-code config.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from mm_core.errors import ConfigError

REMOTE_MODEL_TYPE = "internvl_chat"
REMOTE_ARCHITECTURE = "InternVLChatModel"
HF_ARCHITECTURE = "InternVLForConditionalGeneration"
HfLayout = Literal["hf", "remote_code"]
LAYOUTS: tuple[str, ...] = ("hf", "remote_code")
# InternVL3's Qwen2.5 tokenizer: "<IMG_CONTEXT>" (the remote code looks it up in the tokenizer at run time)
IMG_CONTEXT = "<IMG_CONTEXT>"
IMG_CONTEXT_ID = 151667

# vision_config: remote-code field -> transformers field
_VISION_RENAMES = {"qkv_bias": "attention_bias", "qk_normalization": "use_qk_norm",
                   "initializer_factor": "layer_scale_init_value", "attention_probs_dropout_prob": "attention_dropout"}
# fields of the remote code's run time (attention kernel, regularisation, auto classes): no weights depend on them
_DROPPED = {"_name_or_path", "_attn_implementation_autoset", "auto_map", "use_bfloat16", "use_flash_attn",
            "drop_path_rate", "architectures", "transformers_version", "torch_dtype", "dtype"}


def layout_of(hf: Mapping[str, Any]) -> HfLayout:
    """``remote_code`` for an ``InternVLChatModel`` config.json, ``hf`` otherwise."""
    archs = set(hf.get("architectures") or ())
    if hf.get("model_type") == REMOTE_MODEL_TYPE or REMOTE_ARCHITECTURE in archs or "llm_config" in hf:
        return "remote_code"
    return "hf"


def check_layout(name: str | None, field: str) -> HfLayout | None:
    if name is not None and name not in LAYOUTS:
        raise ConfigError(f"{field} '{name}' is not a checkpoint layout; use one of {list(LAYOUTS)}")
    return name  # type: ignore[return-value]


def context_token_id(hf_dir: str | Path) -> int | None:
    """The id of ``<IMG_CONTEXT>`` in a directory's tokenizer files (``added_tokens.json``, which the
    remote-code repositories ship, or ``tokenizer.json``), or None."""
    d = Path(hf_dir)
    if d.is_file():
        d = d.parent
    added = d / "added_tokens.json"
    if added.is_file():
        found = json.loads(added.read_text()).get(IMG_CONTEXT)
        if found is not None:
            return int(found)
    tok = d / "tokenizer.json"
    if tok.is_file():
        for entry in json.loads(tok.read_text()).get("added_tokens", []):
            if entry.get("content") == IMG_CONTEXT:
                return int(entry["id"])
    return None


def hf_config_from_remote(remote: Mapping[str, Any], source: str = "config.json",
                          image_token_id: int | None = None) -> dict[str, Any]:
    """The ``-hf`` config.json dict equivalent to a remote-code one (refusing what differs in weights
    or numerics, by field). The remote code finds ``<IMG_CONTEXT>`` in the tokenizer at run time: pass
    its id (``context_token_id``); default: InternVL3's 151667."""
    llm = remote.get("llm_config")
    vision = remote.get("vision_config")
    if not isinstance(llm, Mapping) or not isinstance(vision, Mapping):
        raise ConfigError(f"{source}: an InternVLChatModel config needs 'llm_config' and 'vision_config' sections")
    if remote.get("ps_version", "v2") != "v2":
        raise ConfigError(f"{source}: ps_version '{remote.get('ps_version')}' is not supported (InternVL3 uses 'v2'; "
                          f"'v1' orders the pixel shuffle differently)")
    if int(remote.get("select_layer", -1)) != -1:
        raise ConfigError(f"{source}: select_layer {remote.get('select_layer')} is not supported (InternVL3 uses -1)")
    archs = set(llm.get("architectures") or ())
    if llm.get("model_type", "qwen2") != "qwen2" or (archs and "Qwen2ForCausalLM" not in archs):
        raise ConfigError(f"{source}: llm_config is '{llm.get('model_type')}' {sorted(archs)}; mm-internvl reads "
                          f"InternVL3's Qwen2 language models (llm_config.model_type 'qwen2')")
    text = {k: v for k, v in llm.items() if k not in _DROPPED}
    text["model_type"] = "qwen2"
    v = {_VISION_RENAMES.get(k, k): val for k, val in vision.items() if k not in _DROPPED}
    v.update(model_type="internvl_vision", use_absolute_position_embeddings=True)
    v.setdefault("use_mean_pooling", True)  # InternViT of the remote code has no final norm
    ratio = float(remote.get("downsample_ratio", 0.5))
    image = vision.get("image_size", 448)
    patch = vision.get("patch_size", 14)
    side = (image[0] if isinstance(image, (list, tuple)) else int(image)) // (
        patch[0] if isinstance(patch, (list, tuple)) else int(patch))
    tied = bool(remote.get("tie_word_embeddings", llm.get("tie_word_embeddings", False)))
    out: dict[str, Any] = {
        "architectures": [HF_ARCHITECTURE], "model_type": "internvl", "vision_config": v, "text_config": text,
        "image_token_id": int(image_token_id or remote.get("img_context_token_id") or IMG_CONTEXT_ID),
        "image_seq_length": int(math.floor(side * ratio)) ** 2, "downsample_ratio": ratio,
        "projector_hidden_act": "gelu", "vision_feature_layer": -1, "vision_feature_select_strategy": "default",
        "tie_word_embeddings": tied,
    }
    for k in ("torch_dtype", "dtype"):
        if k in remote:
            out[k] = remote[k]
    return out


def remote_config_from_hf(hf: Mapping[str, Any], source: str = "config.json") -> dict[str, Any]:
    """The remote-code config.json dict equivalent to an ``-hf`` one (for writing the original layout)."""
    text = dict(hf.get("text_config") or {})
    vision = dict(hf.get("vision_config") or {})
    if text.get("model_type", "qwen2") != "qwen2":
        raise ConfigError(f"{source}: text_config.model_type '{text.get('model_type')}': the remote-code layout is "
                          f"written for InternVL3's Qwen2 language models only")
    if hf.get("projector_hidden_act", "gelu") != "gelu":
        raise ConfigError(f"{source}: projector_hidden_act '{hf.get('projector_hidden_act')}': the remote code's "
                          f"projector uses GELU")
    back = {v: k for k, v in _VISION_RENAMES.items() if k != "attention_probs_dropout_prob"}
    v = {back.get(k, k): val for k, val in vision.items()
         if k not in ("use_absolute_position_embeddings", "use_mask_token", "transformers_version")}
    v.update(model_type="intern_vit_6b", architectures=["InternVisionModel"])
    llm = {k: val for k, val in text.items() if k != "transformers_version"}
    llm.update(model_type="qwen2", architectures=["Qwen2ForCausalLM"])
    image = vision.get("image_size", [448, 448])
    out: dict[str, Any] = {
        "architectures": [REMOTE_ARCHITECTURE], "model_type": REMOTE_MODEL_TYPE, "llm_config": llm,
        "vision_config": v, "downsample_ratio": float(hf.get("downsample_ratio", 0.5)), "ps_version": "v2",
        "select_layer": int(hf.get("vision_feature_layer", -1)), "template": "internvl2_5",
        "force_image_size": image[0] if isinstance(image, (list, tuple)) else int(image),
        "dynamic_image_size": True, "use_thumbnail": True, "min_dynamic_patch": 1, "max_dynamic_patch": 12,
        "tie_word_embeddings": bool(hf.get("tie_word_embeddings", False)),
        "img_context_token_id": int(hf.get("image_token_id", IMG_CONTEXT_ID)),
    }
    for k in ("torch_dtype", "dtype"):
        if k in hf:
            out[k] = hf[k]
    return out


def config_for_layout(hf: Mapping[str, Any], layout: HfLayout, source: str = "config.json",
                      image_token_id: int | None = None) -> dict[str, Any]:
    """``hf`` as a config.json of ``layout`` (itself when it already is one)."""
    if layout_of(hf) == layout:
        return dict(hf)
    if layout == "remote_code":
        return remote_config_from_hf(hf, source)
    return hf_config_from_remote(hf, source, image_token_id)

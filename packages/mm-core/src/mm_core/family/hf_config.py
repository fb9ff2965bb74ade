"""The one place that reads an HF ``config.json`` and the few fields every layer of mm needs.

Vision-language configs come in two layouts: transformers 5 nests the language model's fields
under ``text_config`` (InternVL's original code: ``llm_config``), older Hub files keep them at the
top level. The readers here accept both, so the engine, the converters and the families agree.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mm_core.errors import ConfigError

HFConfigSource = Mapping[str, Any] | str | Path
TEXT_KEYS = ("text_config", "llm_config")


def config_file(source: str | Path) -> Path:
    """``config.json`` of an HF directory, or the file itself."""
    path = Path(source)
    return path / "config.json" if path.is_dir() else path


def read_hf_config(source: HFConfigSource, *, hint: str = "pass an HF model directory containing config.json"
                   ) -> tuple[dict[str, Any], str]:
    """The config dict and a name for error messages, from a dict, a config.json or an HF dir.

    ``hint`` is the fix an error message suggests (a CLI names its own flag).
    """
    if isinstance(source, Mapping):
        return dict(source), "<config dict>"
    path = config_file(source)
    if not path.is_file():
        raise ConfigError(f"{path}: no such file; {hint}")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: holds a {type(config).__name__}, not a JSON object")
    return config, str(path)


def parse_with_transformers(source: HFConfigSource, *, model_type: str, config_class: str, what: str,
                            refused: Mapping[str, str] | None = None) -> tuple[Any, dict[str, Any], str]:
    """``(transformers config, raw dict, name)``: parsed by transformers' own class (its defaults and
    validation, for every layout its releases wrote), after refusing another ``model_type`` by name
    (``refused``: model types that deserve their own explanation)."""
    import transformers

    raw, name = read_hf_config(source)
    reason = (refused or {}).get(raw.get("model_type"))
    if reason:
        raise ConfigError(f"{name}: model_type '{raw.get('model_type')}' {reason}")
    if raw.get("model_type") not in (None, model_type):
        raise ConfigError(f"{name}: model_type is '{raw.get('model_type')}', expected '{model_type}'")
    try:
        parsed = getattr(transformers, config_class).from_dict(
            {k: v for k, v in raw.items() if k != "transformers_version"})
    except Exception as e:  # transformers validates strictly (its own error types)
        raise ConfigError(f"{name}: not a valid {what} config: {e}") from e
    return parsed, raw, name


def load_hf_config(source: HFConfigSource, **kwargs: Any) -> dict[str, Any]:
    """:func:`read_hf_config` without the name."""
    return read_hf_config(source, **kwargs)[0]


def text_config(hf: Mapping[str, Any]) -> dict[str, Any]:
    """The language model's fields: the nested section over the flat top level (which holds them
    in older files, and shared fields such as ``tie_word_embeddings`` in newer ones)."""
    nested = next((hf[k] for k in TEXT_KEYS if hf.get(k)), {})
    flat = {k: v for k, v in hf.items() if k not in (*TEXT_KEYS, "vision_config")}
    return {**flat, **nested}


def vision_config(hf: Mapping[str, Any], *, source: str = "config.json", required: bool = True) -> dict[str, Any]:
    """The vision encoder's section (``{}`` when absent and not ``required``)."""
    v = hf.get("vision_config")
    if not v and required:
        raise ConfigError(f"{source}: no vision_config; is this a vision-language checkpoint?")
    return dict(v or {})


def layer_counts(hf: Mapping[str, Any]) -> tuple[int, int]:
    """``(vision layers, LLM layers)``: ``depth`` (Qwen) or ``num_hidden_layers`` (InternViT); a config
    in another shape (VisualGLM's ``eva_config`` / ``num_layers``) is counted by its family's converter."""
    vc = vision_config(hf, required=False)
    vit = int(vc.get("depth", vc.get("num_hidden_layers", 0)))
    llm = int(text_config(hf).get("num_hidden_layers", 0))
    if not (vit and llm):
        vit, llm = _converter_depths(hf) or (vit, llm)
    return vit, llm


def _converter_depths(hf: Mapping[str, Any]) -> tuple[int, int] | None:
    """The registered family's converter depths for a config the standard keys do not describe."""
    from mm_core.errors import MMError
    from mm_core.plugins import get_plugin_manager

    try:
        spec = get_plugin_manager().model_for_hf_config(dict(hf))
        if spec.converter is None:
            return None
        depths = get_plugin_manager().converter(spec.converter).factory().depths(hf)
    except (MMError, KeyError, ValueError):
        return None
    return int(depths.get("vit", 0)), int(depths.get("llm", 0))


def is_tied(hf: Mapping[str, Any]) -> bool:
    """Whether the word embedding and the LM head share one weight (the top level decides when
    it says; transformers 5 writes it there, and the text section may carry a stale default)."""
    if "tie_word_embeddings" in hf:
        return bool(hf["tie_word_embeddings"])
    return bool(text_config(hf).get("tie_word_embeddings", False))

"""`mm-run finetune --help` with the values that are valid now, read from the plugin registries.

The config dataclasses can only say ``type: str``; which loss types, templates, models, freeze
groups and kernels exist depends on the installed plugins, so the help adds them when it is built.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mm_core.engine.config import FinetuneConfig

HELP_FLAGS = ("-h", "--help")


def _names(keys: Any, ordered: bool = False) -> str:
    names = [str(k) for k in keys]
    return ", ".join(names if ordered else sorted(names)) or "none registered"


def configured_model(argv: Sequence[str]) -> Any | None:
    """The model spec the rest of the command line (``--config``, ``--model.*``) points at, if any.

    Help must print whatever the config holds, so every failure here only means "no model".
    """
    from mm_core.engine.config import load_hf_config, parse_finetune_config
    from mm_core.engine.model_setup import resolve_spec

    rest = [a for a in argv if a not in HELP_FLAGS]
    try:
        cfg = parse_finetune_config(rest)
        if cfg.model.name is None and cfg.model.hf_config is None and cfg.model.hf_dir is None:
            return None
        return resolve_spec(cfg, load_hf_config(cfg) if cfg.model.name is None else {})
    except Exception:
        return None


def _freeze_groups(pm: Any, model: Any | None) -> str:
    if model is not None:
        default = ", ".join(model.default_freeze) or "nothing"
        return (f"module groups of model '{model.name}': {_names(model.module_groups, ordered=True)}; "
                f"unset freezes the model's default ({default}), [] trains everything")
    per_model = "; ".join(f"{s.name}: {_names(s.module_groups, ordered=True)}" for s in sorted(pm.models, key=lambda s: s.name))
    return f"module groups per registered model (set the model to see only its own): {per_model or 'none'}"


def _kernels(pm: Any) -> str:
    """Registered kernels per device type (without calling availability checks: NPU ones import torch_npu)."""
    from mm_core.kernels.registry import ANY_DEVICE

    by_device: dict[str, list[str]] = {}
    for k in pm.kernels:
        if k.device_type != ANY_DEVICE:
            by_device.setdefault(k.device_type, []).append(f"{k.op}={k.name}")
    reference = _names({k.op for k in pm.kernels if k.device_type == ANY_DEVICE})
    per_device = "; ".join(f"{d}: {', '.join(sorted(v))}" for d, v in sorted(by_device.items()))
    return f"registered kernels: {per_device or 'none'}; every device falls back to the reference ({reference})"


def registry_notes(model: Any | None = None) -> dict[str, str]:
    """Help text per dotted field: the values the installed plugins make valid."""
    from mm_core.plugins import get_plugin_manager

    pm = get_plugin_manager()
    templates = _names(pm.formatters.keys())
    if model is not None and model.formatter:
        templates += f" (model '{model.name}' uses '{model.formatter}', the default)"
    notes = {
        "model.name": f"registered models: {_names(pm.models.keys())}, or package.module:SPEC; "
                      "default: the one accepting the HF config",
        "model.freeze": _freeze_groups(pm, model),
        "training.loss_type": f"registered loss types: {_names(pm.losses.keys())}",
        "training.router_aux_loss_coef": "MoE router balance loss weight; default: the model config's "
                                         "router_aux_loss_coef (0 without one), 0 turns it off",
        "data.config": f"the data pipeline's fields; basic_parameters.template: {templates}",
        "data.data_json": f"a data.json file instead of data.config; its template: {templates}",
        "parallel.device": _kernels(pm),
    }
    broken = pm.broken()
    if broken:
        for key in notes:
            notes[key] += f" [plugins that failed to load: {', '.join(sorted(broken))}; see mm-run plugins]"
    return notes


def print_help(argv: Sequence[str]) -> None:
    """Print the finetune parser's help with the registries' values added to the fields' help."""
    from mm_core.config import build_parser

    parser = build_parser(FinetuneConfig, prog="mm-run finetune")
    notes = registry_notes(configured_model(argv))
    for action in parser._actions:  # jsonargparse adds "(type: ..., default: ...)" after the text
        if action.dest in notes:
            action.help = notes[action.dest]
    parser.print_help()

"""Which formatter (``basic_parameters.template``) turns records into a model's inputs.

The model's spec names its formatter (``ModelSpec.formatter``), so the template defaults to it, and
a template meant for another model (say ``qwen2vl`` for InternVL: other special tokens, another
image layout) is refused before any data is read, naming both.
"""

from __future__ import annotations

from mm_core.data.config import DataConfig
from mm_core.errors import ConfigError, UnknownKeyError
from mm_core.specs import ModelSpec

FIELD = "basic_parameters.template"


def resolve_template(config: DataConfig, model: ModelSpec | None, *, field: str = FIELD) -> str:
    """The template to use (set into ``config`` when it was unset); ConfigError when it does not
    fit ``model`` or is not a registered formatter. ``model`` None: the model of the processor
    directory (``preprocess_parameters.model_name_or_path``) when its config.json names one."""
    from mm_core.plugins import get_plugin_manager

    given = config.basic_parameters.template
    model = model if model is not None else processor_model(config)
    wanted = model.formatter if model is not None else None
    if not given:
        if wanted is None:
            whose = f"model '{model.name}' names no formatter" if model is not None else "no model is given"
            raise ConfigError(f"{field}: not set and {whose}; set it to a registered formatter "
                              f"({_registered()})")
        given = config.basic_parameters.template = wanted
    elif wanted is not None and given != wanted:
        raise ConfigError(f"{field}: template '{given}' does not fit model '{model.name}', whose formatter is "
                          f"'{wanted}'; set it to '{wanted}' or leave it unset")
    try:
        get_plugin_manager().formatter(given)
    except UnknownKeyError as e:
        raise ConfigError(f"{field}: {e}") from None
    return given


def processor_model(config: DataConfig) -> ModelSpec | None:
    """The registered model whose HF config is the processor directory's config.json, if any."""
    from mm_core.family.hf_config import config_file, load_hf_config
    from mm_core.plugins import get_plugin_manager

    path = config.preprocess_parameters.model_name_or_path
    if not path or not config_file(path).is_file():
        return None
    try:
        return get_plugin_manager().model_for_hf_config(load_hf_config(path), source=str(config_file(path)))
    except (ConfigError, UnknownKeyError):
        return None  # not a model mm knows: the template must say which formatter to use


def _registered() -> str:
    from mm_core.plugins import get_plugin_manager

    return ", ".join(str(k) for k in get_plugin_manager().formatters.keys()) or "none registered"

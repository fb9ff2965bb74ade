"""The HF processor a formatter reads (tokenizer, chat template, image and video processors).

Loading one takes seconds, so each directory is loaded once per process (keyed by its path and
modification time); the fingerprint hashes the files that decide the encoding, for the index cache.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

FINGERPRINT_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "chat_template.json",
                     "processor_config.json", "preprocessor_config.json", "video_preprocessor_config.json")

_PROCESSORS: dict[tuple[str, float], Any] = {}


def load_processor(path: str) -> Any:
    """``AutoProcessor`` of ``path`` (never remote code), or the family's own processor when its model
    spec has one (``ModelSpec.processor``); shared by the formatters of this process."""
    key = (str(Path(path).resolve()), Path(path).stat().st_mtime)
    if key not in _PROCESSORS:
        own = _family_processor(path)
        if own is not None:
            _PROCESSORS[key] = own(path)
        else:
            from transformers import AutoProcessor

            _PROCESSORS[key] = AutoProcessor.from_pretrained(path, trust_remote_code=False)
    return _PROCESSORS[key]


def _family_processor(path: str) -> Any:
    """The ``ModelSpec.processor`` of the model whose config.json is in ``path``, or None."""
    from mm_core.errors import MMError

    file = Path(path) / "config.json"
    if not file.is_file():
        return None
    try:
        from mm_core.plugins import get_plugin_manager

        return get_plugin_manager().model_for_hf_config(json.loads(file.read_text()), str(file)).processor
    except (MMError, ValueError):
        return None


def processor_fingerprint(version: str, root: str, settings: dict[str, Any]) -> str:
    """16 hex digits that change with the formatter ``version``, the processor files under ``root``
    and the ``settings`` (JSON-able) that shape the encoding."""
    h = hashlib.sha256(version.encode())
    for name in FINGERPRINT_FILES:
        if (Path(root) / name).is_file():
            h.update(name.encode() + (Path(root) / name).read_bytes())
    h.update(json.dumps(settings, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]

"""GLM-4.5V trains with its vision encoder and projector frozen unless the config says otherwise
(the seed recipe's default); other models freeze nothing by default."""

from __future__ import annotations

import pytest

from mm_core.engine.config import FinetuneConfig
from mm_core.engine.model_setup import frozen_groups
from mm_core.plugins import get_plugin_manager


@pytest.mark.parametrize(("model", "given", "frozen"), [
    ("glm4v_moe", None, ["vision_encoder", "vision_projector"]),
    ("glm4v_moe", [], []),
    ("glm4v_moe", ["text_decoder"], ["text_decoder"]),
    ("glm4v", None, []),
])
def test_unset_freeze_takes_the_models_default(model: str, given: list[str] | None, frozen: list[str]) -> None:
    cfg = FinetuneConfig()
    cfg.model.freeze = given
    assert frozen_groups(cfg, get_plugin_manager().model(model)) == frozen

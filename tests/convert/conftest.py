"""Fixtures: tiny Qwen2.5-VL checkpoints saved by transformers (see tiny_qwen.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch


def load_helpers():
    spec = importlib.util.spec_from_file_location("mm_convert_tiny_qwen", Path(__file__).with_name("tiny_qwen.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


tiny = load_helpers()


@pytest.fixture(scope="session")
def qwen_untied(tmp_path_factory) -> Path:
    return tiny.cached(tmp_path_factory, "untied", tied=False)


@pytest.fixture(scope="session")
def qwen_tied(tmp_path_factory) -> Path:
    return tiny.cached(tmp_path_factory, "tied", tied=True, dtype=torch.bfloat16)


@pytest.fixture(params=["untied", "tied"])
def qwen_hf(request, qwen_untied, qwen_tied) -> Path:
    return qwen_untied if request.param == "untied" else qwen_tied

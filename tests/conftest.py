"""Shared test settings (small thread counts: CI has 2 cores; no network) and the tiny Qwen2.5-VL
checkpoints saved by transformers that several test folders use (see convert/tiny_qwen.py)."""

import importlib.util
import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def load_helpers():
    spec = importlib.util.spec_from_file_location("mm_convert_tiny_qwen", Path(__file__).parent / "convert" / "tiny_qwen.py")
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

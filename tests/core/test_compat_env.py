"""requirements/compat_env.py (``make test-compat``): which torchvision, which pins, which torch deps."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[2] / "requirements" / "compat_env.py"
_spec = importlib.util.spec_from_file_location("compat_env", _PATH)
compat_env = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(compat_env)


def test_torchvision_release_paired_with_each_torch():
    assert compat_env.torchvision_for("2.14.1") == "0.29.1"  # the dev pins agree
    assert compat_env.torchvision_for("2.11.0") == "0.26.0"
    with pytest.raises(SystemExit, match="torch 3.0.0"):
        compat_env.torchvision_for("3.0.0")


def test_dev_pins_keep_everything_but_torch_and_torchvision():
    pins = compat_env.dev_pins_without_torch()
    names = {p.split("==")[0].lower() for p in pins}
    assert "torch" not in names and "torchvision" not in names
    assert {"transformers", "pytest", "numpy"} <= names
    assert all("==" in p for p in pins)  # exact pins, comments stripped


def test_torch_requirements_drop_the_cuda_runtime(monkeypatch):
    reqs = ['filelock', 'sympy>=1.13.3', 'nvidia-cudnn-cu13==9.19.0.56; platform_system == "Linux"',
            'cuda-bindings<14,>=13.0.3; platform_system == "Linux"', 'triton==3.6.0; platform_system == "Linux"',
            'opt-einsum>=3.3; extra == "opt-einsum"']

    class Done:
        stdout = json.dumps(reqs)

    monkeypatch.setattr(compat_env.subprocess, "run", lambda *a, **k: Done())
    assert compat_env.torch_runtime_requirements(Path("python")) == ["filelock", "sympy>=1.13.3"]

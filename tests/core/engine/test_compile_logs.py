"""training.compile on a machine without a GPU does not print torch's CUDA_HOME warning."""

from __future__ import annotations

import logging
import subprocess
import sys

from mm_core.engine.compile_logs import CPP_EXTENSION_LOGGER, quiet_cuda_home_warning


def _record(msg: str) -> logging.LogRecord:
    return logging.LogRecord(CPP_EXTENSION_LOGGER, logging.WARNING, "cpp_extension.py", 183, msg, ("/usr/local",), None)


def test_only_the_cuda_home_line_is_dropped():
    quiet_cuda_home_warning()
    quiet_cuda_home_warning()  # idempotent
    logger = logging.getLogger(CPP_EXTENSION_LOGGER)
    assert not logger.filter(_record("No CUDA runtime is found, using CUDA_HOME='%s'"))
    assert logger.filter(_record("Error building extension %s"))


def test_torch_finds_a_toolkit_without_printing_it(tmp_path):
    """What inductor's import runs (the toolkit search), with a toolkit on PATH and no GPU visible."""
    nvcc = tmp_path / "cuda" / "bin" / "nvcc"
    nvcc.parent.mkdir(parents=True)
    nvcc.write_text("#!/bin/sh\n")
    nvcc.chmod(0o755)
    code = ("from mm_core.engine.compile_logs import quiet_cuda_home_warning; quiet_cuda_home_warning(); "
            "import torch.utils.cpp_extension as c; print('home', c.CUDA_HOME)")
    env = {"PATH": f"{nvcc.parent}:/usr/bin:/bin", "CUDA_VISIBLE_DEVICES": ""}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert f"home {tmp_path / 'cuda'}" in run.stdout
    assert "CUDA_HOME" not in run.stderr, run.stderr

"""Quiet a misleading torch warning that ``training.compile`` triggers on machines without a GPU.

Inductor imports ``torch.utils.cpp_extension``, which looks for a CUDA toolkit at import (``CUDA_HOME``,
then ``nvcc`` on ``PATH``, then ``/usr/local/cuda``) and, when it finds one but no CUDA runtime,
logs ``No CUDA runtime is found, using CUDA_HOME='...'``. That path is only used to build CUDA
extensions; compiling layers for the CPU never reads it, so the line only alarms a CPU user.
"""

from __future__ import annotations

import logging

CPP_EXTENSION_LOGGER = "torch.utils.cpp_extension"
CUDA_HOME_WARNING = "No CUDA runtime is found"


class _DropCudaHomeWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(CUDA_HOME_WARNING)


def quiet_cuda_home_warning() -> None:
    """Drop torch's CUDA_HOME line (only that one) from its extension-building logger; idempotent."""
    logger = logging.getLogger(CPP_EXTENSION_LOGGER)
    if not any(isinstance(f, _DropCudaHomeWarning) for f in logger.filters):
        logger.addFilter(_DropCudaHomeWarning())

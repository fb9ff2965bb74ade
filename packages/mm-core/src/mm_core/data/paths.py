"""Where a record's media files are: the one rule the loader, inspect and llava-to-mllm share.

A media path in a record (``images``/``videos``) is absolute, or relative to the data config's
``basic_parameters.dataset_dir``: not to the dataset file, not to the working directory. So a
dataset folder moves as a whole, and a converter that knows the dataset dir writes paths the
loader finds (:func:`record_path` is the inverse of :func:`resolve_media`).
"""

from __future__ import annotations

import os
from pathlib import Path

from mm_core.data.bad_records import BadRecord

SETTING = "basic_parameters.dataset_dir"


def media_path(path: str, dataset_dir: str | os.PathLike[str]) -> str:
    """The file a record's media path names (no check that it exists)."""
    return path if os.path.isabs(path) else os.path.join(os.fspath(dataset_dir), path)


def resolve_media(path: str, dataset_dir: str | os.PathLike[str], where: str) -> str:
    """The existing file a record's media path names; a missing one is a bad record whose message
    gives the path tried and how it was built, so a wrong dataset_dir is visible at once."""
    full = media_path(path, dataset_dir)
    if not os.path.isfile(full):
        how = ("an absolute path in the record" if os.path.isabs(path) else
               f"the record's '{path}' under {SETTING} '{os.fspath(dataset_dir)}'")
        raise BadRecord("missing_media", where, f"file '{full}' does not exist ({how}; media paths are "
                                                f"relative to {SETTING} or absolute)")
    return full


def record_path(file: str | os.PathLike[str], dataset_dir: str | os.PathLike[str]) -> str:
    """What to write into a record so that :func:`resolve_media` finds ``file`` from ``dataset_dir``:
    relative when the file is inside the dataset dir, absolute otherwise (never ``..``)."""
    full, root = Path(file).resolve(), Path(dataset_dir).resolve()
    try:
        return full.relative_to(root).as_posix()
    except ValueError:
        return str(full)

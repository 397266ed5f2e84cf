"""Atomic file and folder writes: a reader (or a killed writer) never sees a half-written result."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: Path, folder: bool = False) -> Iterator[Path]:
    """Yield a unique staging path beside `path`; when the block succeeds it becomes `path` in one rename.

    A file replaces any earlier one (two writers of the same file both succeed, the last rename wins whole).
    With `folder=True` the staging path is an empty folder; if another process created `path` first, its
    folder is kept and this one discarded. A failing block leaves nothing behind.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    if folder:
        staging.mkdir()
    try:
        yield staging
        if not folder:
            os.replace(staging, path)
            return
        try:
            os.rename(staging, path)
        except OSError:
            if not path.is_dir():
                raise
    except BaseException:
        if not folder:
            staging.unlink(missing_ok=True)
        raise
    finally:
        if folder and staging.is_dir():
            shutil.rmtree(staging, ignore_errors=True)


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on `path` (created if needed), held for the block; other processes wait."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)

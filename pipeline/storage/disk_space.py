"""Saying that a disk is full: which path, how much is free there, and how much more is needed."""

from __future__ import annotations

import shutil
from pathlib import Path

from pipeline.errors import UserError

MIB = 2 ** 20


def free_bytes(path: str | Path) -> int | None:
    """Free bytes on the filesystem holding `path` (or its nearest existing parent)."""
    path = Path(path).absolute()
    for folder in (path, *path.parents):
        if folder.exists():
            return shutil.disk_usage(folder).free
    return None


def no_space_error(path: str | Path, needed: int | None = None) -> UserError:
    free = free_bytes(path)
    amounts = ", ".join(part for part in (
        f"{free / MIB:.1f} MiB free there" if free is not None else "",
        f"about {needed / MIB:.1f} MiB more needed" if needed else "") if part)
    return UserError(f"no space left on the device while writing '{path}' ({amounts}); free some space and "
                     "rerun the same command (it resumes; what was written before is kept)")

"""Where an artifact came from: the pipeline version and the code revision that made it."""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path

from pipeline import __version__

_SOURCE_ROOT = Path(__file__).resolve().parent.parent


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """`<version>+g<commit>[.dirty]` when running from a git checkout, else the package version."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"], cwd=_SOURCE_ROOT,
            capture_output=True, text=True, check=True, timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", "pipeline", "stages",
             "world_models"], cwd=_SOURCE_ROOT, capture_output=True, text=True, check=True, timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return __version__
    return f"{__version__}+g{commit}" + (".dirty" if dirty else "")

"""Write files under a temporary name and rename them into place only when complete."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def temporary_path(path: Path) -> Path:
    """The name a file has while it is being written; a crash leaves only this behind."""
    return path.with_name(path.name + ".partial")


def write_bytes_atomic(path: Path, data: bytes) -> None:
    tmp = temporary_path(path)
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json_atomic(path: Path, obj: Any) -> None:
    """Keys keep their order: some orders carry meaning (a manifest's `state_keys` lay out `state.npy`)."""
    write_bytes_atomic(path, (json.dumps(obj, indent=2) + "\n").encode())

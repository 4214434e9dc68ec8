"""Shared helpers: run the real `pvr-pipe` command, snapshot directories, small datasets."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.config import CollectConfig
from stages import collect

PVR_PIPE = str(Path(sys.executable).with_name("pvr-pipe"))


def pvr_pipe(*args: str, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([PVR_PIPE, *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


def assert_user_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    """Exit code 2, exactly one line on stderr naming the problem, no traceback."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def snapshot(root: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file below `root` (or of `root` itself)."""
    root = Path(root)
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    return {str(p.relative_to(root.parent)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def collect_toy(out: Path, **overrides) -> None:
    options = dict(env="toy/pointmass-reach", episodes=5, episodes_per_shard=2, max_steps=20, seed=3,
                   out=out)
    collect.run(CollectConfig(**(options | overrides)), show_progress=False)


@pytest.fixture(scope="session")
def toy_dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("toy") / "toy-train"
    collect_toy(out)
    return out

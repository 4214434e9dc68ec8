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


def write_linear_system_store(path: Path, episodes: int = 8, length: int = 101, dim: int = 16, seed: int = 0,
                              encoder: str = "synthetic-linear", variant: str = "train", map_seed: int = 0) -> Path:
    """A real embedding store whose 'embeddings' are a known linear system observed through a
    random linear map: x' = A x + B a (a damped rotation), embedding = C x, reward = -|x|^2."""
    import numpy as np

    from pipeline.storage import embedding_store

    rng = np.random.default_rng(seed)
    angle = 0.2
    a_matrix = 0.98 * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    c_matrix = np.random.default_rng(map_seed).normal(size=(dim, 2))   # the 'look': another seed, an OOD look
    frames = episodes * length
    state, action = np.zeros((frames, 2), np.float32), rng.uniform(-1, 1, (frames, 2)).astype(np.float32)
    for e in range(episodes):
        x = rng.normal(size=2)
        for t in range(length):
            state[e * length + t] = x
            x = a_matrix @ x + 0.5 * action[e * length + t]
    reward = -(state ** 2).sum(1)
    episode_start = np.arange(0, frames, length)
    reward[episode_start] = 0.0
    is_first = np.zeros(frames, bool)
    is_first[episode_start] = True
    is_last = np.roll(is_first, -1)
    group = embedding_store.create_store(
        str(path), frames=frames, feature="embedding", feature_shape=(dim,), feature_dtype="float32",
        step_layout=embedding_store.step_array_layout(2, 2), episode_start=episode_start, chunk_frames=length,
        attrs={"encoder": encoder, "weights_sha256": "none", "env": "synthetic/linear", "variant": variant,
               "source_dataset": str(path.parent / "linear"), "properties": {"architecture": "none"}})
    arrays = {"embedding": state @ c_matrix.T, "action": action, "reward": reward, "is_first": is_first,
              "is_last": is_last, "is_terminal": np.zeros(frames, bool), "state": state}
    for name, values in arrays.items():
        group[name][:] = values
    return path

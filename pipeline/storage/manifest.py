"""`manifest.json` of a trajectory dataset: what it holds and where it came from."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Literal

import fsspec
from pydantic import BaseModel, ValidationError

from pipeline.errors import UserError

MANIFEST_NAME = "manifest.json"
FORMAT = "pvr-pipe/trajectories"


class ShardRecord(BaseModel):
    name: str
    sha256: str
    bytes: int
    episode_keys: list[str]
    episode_seeds: list[int]
    episode_steps: list[int]
    episode_returns: list[float]

    @property
    def episodes(self) -> int:
        return len(self.episode_keys)

    @property
    def steps(self) -> int:
        return sum(self.episode_steps)


class TrajectoryManifest(BaseModel):
    format: Literal["pvr-pipe/trajectories"] = FORMAT
    format_version: int = 1
    env: str
    variant: str
    variant_seed: int
    policy: str
    seed: int
    frame_size: int
    image_format: str
    action_dim: int
    action_space: Literal["box", "discrete"] = "box"   # discrete actions are stored one-hot
    action_repeat: int
    state_keys: dict[str, int]
    time_limit: int | None = None        # agent steps an episode lasts at most (None: older datasets)
    episodic: bool | None = None         # the env can end an episode with a true terminal
    episodes: int
    steps: int
    frames: int
    shards: list[ShardRecord]
    config: dict[str, Any]
    pipeline_version: str


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_manifest_bytes(root: Path | str) -> bytes:
    """The raw manifest of the dataset at `root` (a path or any fsspec URL)."""
    fs, path = fsspec.core.url_to_fs(str(root))
    if not fs.isfile(f"{path}/{MANIFEST_NAME}"):
        raise UserError(f"'{root}' is not a trajectory dataset (no {MANIFEST_NAME}); make one with "
                        "`pvr-pipe collect`, or rerun an interrupted collection to finish it")
    return fs.cat_file(f"{path}/{MANIFEST_NAME}")


def read_manifest(root: Path | str) -> TrajectoryManifest:
    path = f"{root}/{MANIFEST_NAME}"
    try:
        return TrajectoryManifest.model_validate_json(read_manifest_bytes(root))
    except ValidationError as error:
        raise UserError(f"'{path}' is not a valid trajectory manifest "
                        f"({error.errors()[0]['loc']}: {error.errors()[0]['msg']})") from None

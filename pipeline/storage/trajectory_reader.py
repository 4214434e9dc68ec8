"""Read a trajectory dataset: its samples (streamed from a path or fsspec URL), episodes, integrity, summary."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path
from typing import Any, Iterator

import fsspec
import numpy as np
from PIL import Image

from pipeline.errors import UserError
from pipeline.storage.episode import STEP_ARRAYS, Episode
from pipeline.storage.manifest import TrajectoryManifest, read_manifest, sha256_file


def decode_episode(sample: dict[str, Any]) -> Episode:
    """An `Episode` from a raw WebDataset sample (field name -> bytes)."""
    frame_fields = sorted(k for k in sample if k.startswith("frame."))
    frames = np.stack([decode_frame(sample[k]) for k in frame_fields])
    arrays = {name: np.load(io.BytesIO(sample[f"{name}.npy"]), allow_pickle=False) for name in STEP_ARRAYS}
    return Episode(frames=frames, meta=json.loads(sample["meta.json"]), **arrays)


def iter_episodes(root: Path, manifest: TrajectoryManifest | None = None) -> Iterator[Episode]:
    """Every episode of the dataset at `root`, in shard order."""
    manifest = manifest or read_manifest(root)
    for shard in manifest.shards:
        for _, sample in iter_raw_samples(f"{root}/{shard.name}"):
            yield decode_episode(sample)


def verify_dataset(root: Path, manifest: TrajectoryManifest | None = None) -> None:
    """Check each shard's sha256 against the manifest; a mismatch is a `UserError` naming it."""
    manifest = manifest or read_manifest(root)
    for shard in manifest.shards:
        path = Path(root) / shard.name
        if not path.is_file():
            raise UserError(f"shard '{path}' is missing; pull or re-collect the dataset")
        if sha256_file(path) != shard.sha256:
            raise UserError(f"shard '{path}' is corrupt (sha256 differs from manifest.json); "
                            "re-collect the dataset or pull it again")


def summarize(manifest: TrajectoryManifest) -> dict[str, Any]:
    """What `pvr-pipe info` shows for a trajectory dataset."""
    returns = np.array([r for shard in manifest.shards for r in shard.episode_returns])
    lengths = np.array([n for shard in manifest.shards for n in shard.episode_steps])
    return {
        "kind": "trajectories",
        "env": manifest.env,
        "variant": f"{manifest.variant} (variant seed {manifest.variant_seed})",
        "policy": manifest.policy,
        "episodes": manifest.episodes,
        "steps": manifest.steps,
        "frames": manifest.frames,
        "episode_length": f"{lengths.min()}-{lengths.max()} steps (mean {lengths.mean():.1f})",
        "frame": f"{manifest.frame_size}x{manifest.frame_size} RGB, {manifest.image_format}",
        "action": f"{manifest.action_dim}-d {manifest.action_space}, repeat {manifest.action_repeat}",
        "state": ", ".join(f"{k}[{n}]" for k, n in manifest.state_keys.items()),
        "return": (f"mean {returns.mean():.2f}, std {returns.std():.2f}, "
                   f"min {returns.min():.2f}, max {returns.max():.2f}"),
        "shards": len(manifest.shards),
        "bytes": sum(s.bytes for s in manifest.shards),
        "seed": manifest.seed,
        "pipeline_version": manifest.pipeline_version,
    }


class HashingReader:
    """A file object that feeds every byte read through it to a sha256."""

    def __init__(self, raw):
        self.raw, self.digest = raw, hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        self.digest.update(data)
        return data

    def drain(self) -> str:
        """Read what is left (tar padding, skipped members); the hex digest of the whole file."""
        while self.read(1 << 20):
            pass
        return self.digest.hexdigest()


def iter_raw_samples(shard_url: str, sha256: str | None = None) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, field -> bytes) per sample of one shard, streamed from a path or fsspec URL.

    With `sha256` (the manifest's), the bytes are hashed as they stream and the shard's last
    sample is given only once the whole shard matched: read it to the end before using anything
    read from it.
    """
    key, sample = None, {}
    try:
        with fsspec.open(shard_url, "rb") as raw:
            f = HashingReader(raw) if sha256 else raw
            with tarfile.open(fileobj=f, mode="r|") as tar:
                for member in tar:
                    if not member.isfile():
                        continue
                    member_key, field = member.name.split(".", 1)
                    if member_key != key and sample:
                        yield key, sample
                        sample = {}
                    key = member_key
                    sample[field] = tar.extractfile(member).read()
            if sha256 and f.drain() != sha256:
                raise UserError(f"shard '{shard_url}' is corrupt (its sha256 differs from manifest.json); "
                                "re-collect the dataset or pull it again")
    except (tarfile.TarError, OSError, ValueError) as error:
        raise UserError(f"shard '{shard_url}' is corrupt or unreadable ({type(error).__name__}: {error}); "
                        "re-collect the dataset or pull it again") from None
    if sample:
        yield key, sample


def decode_frame(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))

"""The embedding store: one Zarr v3 group per dataset x encoder, readable with plain zarr/dask.

Arrays, all with the frame (step) axis first and the same chunking along it:
  embedding (N, D) float16/float32   -- or `pixels` (N, 3, 64, 64) uint8 for the pixel baseline
  action, reward, is_first, is_last, is_terminal, state   -- copied from the trajectory dataset
  episode_start (E,) int64           -- index of each episode's first frame
Attributes record the encoder, its weights, preprocessing, precision and the source dataset.

A store is built under `<out>.partial` with one marker per finished unit in `.progress/`, and
renamed to `<out>` when every unit is done, so a crash never leaves a store that looks finished.
Finishing records each array's content sha256 in the attrs (`array_sha256`); every read of a
finished store checks them, so a changed or missing chunk (which Zarr reads as zeros) is an
error, never data.
Online fine-tuning keeps a store that grows by whole episodes (`append_episode`); its checkpoint
records how far the store is valid, and a resumed run cuts it back there (`truncate_store`).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import fsspec
import numpy as np
import zarr

from pipeline.errors import UserError
from pipeline.storage.episode import STEP_ARRAYS

FORMAT = "pvr-pipe/embeddings"
PROGRESS_DIR = ".progress"
EPISODE_CHUNK = 1024


def partial_url(url: str) -> str:
    return url.rstrip("/") + ".partial"


def filesystem(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    return fsspec.core.url_to_fs(url)


def step_array_layout(action_dim: int, state_dim: int) -> dict[str, tuple[tuple[int, ...], str]]:
    """Per-frame shape and dtype of each step array copied from the trajectory dataset."""
    return {"action": ((action_dim,), "float32"), "reward": ((), "float32"), "is_first": ((), "bool"),
            "is_last": ((), "bool"), "is_terminal": ((), "bool"), "state": ((state_dim,), "float32")}


def zarr_location(url: str) -> str:
    """What to hand zarr: a plain path for local files (file:// included), else the fsspec URL."""
    fs, path = filesystem(url)
    return path if "file" in fs.protocol else url


def create_store(url: str, *, frames: int, feature: str, feature_shape: tuple[int, ...], feature_dtype: str,
                 step_layout: dict[str, tuple[tuple[int, ...], str]], episode_start: np.ndarray,
                 chunk_frames: int, attrs: dict[str, Any]) -> zarr.Group:
    """A new store with every per-frame array allocated; units fill chunk-aligned regions."""
    group = zarr.open_group(zarr_location(url), mode="w", zarr_format=3)
    for name, (shape, dtype) in {feature: (feature_shape, feature_dtype), **step_layout}.items():
        group.create_array(name, shape=(frames, *shape), dtype=dtype, chunks=(chunk_frames, *shape),
                           fill_value=0)
    group.create_array("episode_start", data=episode_start.astype(np.int64),
                       chunks=(max(len(episode_start), EPISODE_CHUNK),))
    group.attrs.update({"format": FORMAT, "format_version": 1, "feature": feature, **attrs})
    return group


def open_store(url: str, mode: str = "r") -> zarr.Group:
    fs, path = filesystem(url)
    if not fs.exists(f"{path}/zarr.json"):
        raise UserError(f"'{url}' is not an embedding store (no zarr.json); make one with `pvr-pipe encode`")
    group = zarr.open_group(zarr_location(url), mode=mode, zarr_format=3)
    if group.attrs.get("format") != FORMAT:
        raise UserError(f"'{url}' is a Zarr group but not a pvr-pipe embedding store")
    return group


def mark_unit_done(url: str, unit: int, record: dict[str, Any]) -> None:
    fs, path = filesystem(url)
    fs.makedirs(f"{path}/{PROGRESS_DIR}", exist_ok=True)
    fs.pipe_file(f"{path}/{PROGRESS_DIR}/unit-{unit:06d}.json", json.dumps(record).encode())


def units_done(url: str) -> set[int]:
    fs, path = filesystem(url)
    if not fs.exists(f"{path}/{PROGRESS_DIR}"):
        return set()
    return {int(name.rsplit("unit-", 1)[1].split(".")[0]) for name in fs.ls(f"{path}/{PROGRESS_DIR}", detail=False)}


def finish_store(url: str) -> None:
    """Record every array's content hash, drop the progress markers and rename `<url>.partial`
    to `<url>`."""
    group = open_store(partial_url(url), mode="r+")
    names = [group.attrs["feature"], *STEP_ARRAYS, "episode_start"]
    group.attrs["array_sha256"] = {name: array_sha256(group[name][:]) for name in names}
    fs, path = filesystem(partial_url(url))
    fs.rm(f"{path}/{PROGRESS_DIR}", recursive=True)
    _, final = filesystem(url)
    fs.mv(path, final, recursive=True)


def describe_store(url: str) -> dict[str, Any]:
    """What `pvr-pipe info` shows for an embedding store."""
    group = open_store(url)
    attrs = dict(group.attrs)
    feature = group[attrs["feature"]]
    return {
        "kind": "embeddings",
        "encoder": attrs["encoder"],
        "architecture": f"{attrs['properties']['architecture']} ({attrs['timm_architecture'] or 'no model'})",
        "weights": f"{attrs['weights_sha256']} ({attrs['weights_source']})",
        attrs["feature"]: f"{feature.shape} {feature.dtype}, chunks {feature.chunks}",
        "episodes": int(group["episode_start"].shape[0]),
        "frames": int(feature.shape[0]),
        "preprocessing": (f"{attrs['resolution']} px {attrs['interpolation']}, mean {attrs['normalization']['mean']}, "
                          f"std {attrs['normalization']['std']}, pooling {attrs['pooling']}"),
        "precision": attrs["compute_precision"],
        "source": f"{attrs['source_dataset']} (manifest sha256 {attrs['source_manifest_sha256'][:12]})",
        "env": f"{attrs['env']} [{attrs['variant']}]",
        "pipeline_version": attrs.get("pipeline_version"),
    }


def read_store(url: str) -> tuple[dict[str, np.ndarray], np.ndarray, dict[str, Any]]:
    """Every per-frame array of a store in memory, its episode starts and attributes; a finished
    store's arrays are checked against the hashes it recorded (a growing online store has none)."""
    group = open_store(url)
    attrs = dict(group.attrs)
    feature = attrs["feature"]
    names = [feature, *STEP_ARRAYS]
    missing = [name for name in names if name not in group]
    if missing:
        raise UserError(f"embedding store '{url}' lacks arrays {missing}; re-encode it with `pvr-pipe encode`")
    lengths = {name: group[name].shape[0] for name in names}
    if len(set(lengths.values())) > 1:
        raise UserError(f"embedding store '{url}' is inconsistent: its per-frame arrays have different lengths "
                        f"({', '.join(f'{k} {v}' for k, v in lengths.items())}); re-encode it with `pvr-pipe encode`")
    arrays = {name: group[name][:] for name in [*names, "episode_start"]}
    for name, expected in attrs.get("array_sha256", {}).items():
        if name in arrays and array_sha256(arrays[name]) != expected:
            raise UserError(f"embedding store '{url}' is damaged: array '{name}' differs from the hash recorded "
                            "when it was made (a chunk changed or is missing); re-encode it with `pvr-pipe encode`")
    episode_start = arrays.pop("episode_start")
    return arrays, episode_start, attrs


def verify_store(url: str) -> None:
    """Check every array of a store against its recorded hashes (`pvr-pipe info --verify`)."""
    group = open_store(url)
    recorded = group.attrs.get("array_sha256")
    if recorded is None:
        raise UserError(f"embedding store '{url}' records no array hashes (made before pvr-pipe recorded them, "
                        "or still growing); re-encode it to make it verifiable")
    absent = sorted(name for name in recorded if name not in group)
    if absent:
        raise UserError(f"embedding store '{url}' is damaged: arrays {absent} are missing; re-encode it")
    read_store(url)


def array_sha256(array: np.ndarray) -> str:
    """Content hash of one array: its dtype, shape and bytes (independent of chunking and compression)."""
    digest = hashlib.sha256(f"{array.dtype.str}{array.shape}".encode())
    digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def arrays_sha256(arrays: dict[str, np.ndarray]) -> str:
    """Content hash of the arrays a run trains on (independent of chunking and compression)."""
    digest = hashlib.sha256()
    for name in sorted(arrays):
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(arrays[name]).tobytes())
    return digest.hexdigest()


def append_episode(group: zarr.Group, arrays: dict[str, np.ndarray]) -> None:
    """Add one episode (the feature and every step array, frame axis first) at the end."""
    feature = group.attrs["feature"]
    group["episode_start"].append(np.array([group[feature].shape[0]], np.int64))
    for name in (feature, *STEP_ARRAYS):
        group[name].append(np.asarray(arrays[name]).astype(group[name].dtype))


def truncate_store(group: zarr.Group, frames: int, episodes: int) -> None:
    """Cut the store back to its first `episodes` episodes (`frames` frames)."""
    for name in (group.attrs["feature"], *STEP_ARRAYS):
        group[name].resize((frames, *group[name].shape[1:]))
    group["episode_start"].resize((episodes,))

"""`pvr-pipe encode`: embed every frame of a trajectory dataset once with a frozen PVR.

Frames are numbered in dataset order (shard by shard, episode by episode). Work is split into
units of `chunk_frames` consecutive frames, aligned with the store's chunks so that no two units
write the same chunk; by default a chunk holds one trajectory shard's frames, so a unit is a
shard. A unit reads only the episodes it covers, decodes and preprocesses in a loader thread
while the model runs (or, with `loaders`, reads and decodes in loader processes, and only the
uint8 frames go to the device, where they are resized and normalised), writes its region of
every array and records that it is done. Batches start at the unit's first frame, so the bytes
do not depend on how units are scheduled: in-process, with loader processes, on a local Dask
cluster (`workers`), or an existing one (`scheduler`).
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import numpy as np
import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from pipeline import __version__
from pipeline.config import EncodeConfig
from pipeline.encoders import FrozenEncoder, get_spec
from pipeline.encoders.pixels import PIXEL_SIZE
from pipeline.errors import UserError
from pipeline.parallel import dask_client, map_in_processes, prefetch
from pipeline.storage import embedding_store
from pipeline.storage.episode import STEP_ARRAYS
from pipeline.storage.frame_units import (EpisodeSpan, Unit, default_chunk_frames, episode_spans, plan_units,
                                          read_unit_arrays)
from pipeline.storage.manifest import TrajectoryManifest, read_manifest_bytes
from pipeline.storage.writer_lock import writer_lock

def encode_loaders(cfg: EncodeConfig) -> int:
    """Loader processes per encoding process: as configured; by default none on the CPU (its cores
    run the model) or on Dask (its workers decode side by side), and on a GPU one per spare core,
    at most 8 (one thread decodes ~3,000 PNG frames/s)."""
    if cfg.loaders is not None:
        return cfg.loaders
    if not cfg.device.startswith("cuda") or cfg.workers or cfg.scheduler:
        return 0
    return max(0, min(8, (os.cpu_count() or 1) - 2))


def encode_units(cfg: EncodeConfig, encoder: FrozenEncoder, dataset: str, spans: list[EpisodeSpan],
                 store_url: str, units: list[Unit], on_batch=None) -> list[dict]:
    """Encode `units` in order, each written to its region of every array and marked done.

    One loader thread reads and decodes each unit whole and preprocesses it ahead across unit
    boundaries, so the model never waits for the first batch of the next unit. With loader
    processes, they read and decode units ahead and the thread only moves frames to the device
    and preprocesses them.
    """
    loaders = encode_loaders(cfg)
    jobs = ((dataset, spans, unit, encoder.spec.reads) for unit in units)
    units_read = map_in_processes(read_unit_arrays, jobs, loaders) if loaders else map(read_unit_arrays, jobs)

    def batches():
        for unit, (frames, steps) in zip(units, units_read):
            for start in range(0, len(frames), cfg.batch_size):
                yield unit, encoder.preprocess(frames[start:start + cfg.batch_size]), None
            yield unit, None, steps  # the unit's frames are all read

    records, outputs = [], []
    for unit, x, steps in prefetch(batches()):
        if x is not None:
            outputs.append(encoder.forward(x).cpu().numpy())
            if on_batch:
                on_batch(len(x))
            continue
        records.append(write_unit(store_url, dataset, unit, np.concatenate(outputs), steps))
        outputs = []
    return records


def write_unit(store_url: str, dataset: str, unit: Unit, values: np.ndarray,
               steps: dict[str, list[np.ndarray]]) -> dict:
    group = embedding_store.open_store(store_url, mode="r+")
    feature = group.attrs["feature"]
    if len(values) != unit.stop - unit.start:
        raise UserError(f"dataset '{dataset}' gave {len(values)} frames for frames "
                        f"{unit.start}-{unit.stop}; it does not match its manifest")
    group[feature][unit.start:unit.stop] = values.astype(group[feature].dtype)
    for name in STEP_ARRAYS:
        region = group[name]
        region[unit.start:unit.stop] = np.concatenate(steps[name]).reshape((len(values), *region.shape[1:]))
    record = {"unit": unit.index, "start": unit.start, "stop": unit.stop}
    embedding_store.mark_unit_done(store_url, unit.index, record)
    return record


_worker_encoders: dict[str, FrozenEncoder] = {}


def _encoder_for(cfg: EncodeConfig) -> FrozenEncoder:
    """One encoder per process (and config): Dask workers load the model once."""
    key = cfg.model_dump_json(include={"model", "weights", "download", "device", "precision", "compile"})
    if key not in _worker_encoders:
        _worker_encoders[key] = FrozenEncoder(get_spec(cfg.model), cfg.weights, cfg.download, cfg.device,
                                              cfg.precision, cfg.compile)
    return _worker_encoders[key]


def encode_unit_task(cfg: EncodeConfig, dataset: str, spans: list[EpisodeSpan], store_url: str,
                     unit: Unit, threads: int) -> dict:
    """What a Dask worker runs for one unit."""
    torch.set_num_threads(threads)
    return encode_units(cfg, _encoder_for(cfg), dataset, spans, store_url, [unit])[0]


def default_out(cfg: EncodeConfig) -> str:
    return str(Path("data") / "embeddings" / Path(cfg.dataset.rstrip("/")).name / f"{cfg.model}.zarr")


def run(cfg: EncodeConfig, show_progress: bool = True) -> str:
    """Encode `cfg.dataset` with `cfg.model` into a Zarr store; resumes an interrupted run."""
    spec = get_spec(cfg.model)
    if cfg.dataset is None:
        raise UserError("no dataset; pass --dataset PATH (a directory made by `pvr-pipe collect`)")
    manifest_bytes = read_manifest_bytes(cfg.dataset.rstrip("/"))   # a bad dataset fails before any lock
    out = cfg.out or default_out(cfg)
    with writer_lock(out, "encode"):
        return _encode(cfg, spec, manifest_bytes, out, show_progress)


def _encode(cfg: EncodeConfig, spec, manifest_bytes: bytes, out: str, show_progress: bool) -> str:
    dataset = cfg.dataset.rstrip("/")
    manifest = TrajectoryManifest.model_validate_json(manifest_bytes)
    manifest_sha = hashlib.sha256(manifest_bytes).hexdigest()
    chunk_frames = cfg.chunk_frames or default_chunk_frames(manifest)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    encoder = _encoder_for(cfg)
    provenance = encoder.provenance()
    # What the stored bytes depend on; another identity at `out` is never overwritten.
    dtype = "float32" if spec.reads == "state" else cfg.dtype   # a state is never rounded to float16
    identity = {"encoder": spec.name, "weights_sha256": encoder.weights_sha256,
                "compute_precision": provenance["compute_precision"],
                "source_manifest_sha256": manifest_sha, "dtype": dtype, "batch_size": cfg.batch_size,
                "chunk_frames": chunk_frames}
    partial = embedding_store.partial_url(out)
    if _check_existing(out, identity, final=True):
        return out
    resume = _check_existing(partial, identity, final=False)
    total = manifest.frames
    if not resume:
        is_pixels = spec.name == "pixels"
        state_dim = sum(manifest.state_keys.values())
        embedding_store.create_store(
            partial, frames=total, feature="pixels" if is_pixels else "embedding",
            feature_shape=(3, PIXEL_SIZE, PIXEL_SIZE) if is_pixels else (state_dim if spec.reads == "state"
                                                                          else spec.embed_dim,),
            feature_dtype="uint8" if is_pixels else dtype,
            step_layout=embedding_store.step_array_layout(manifest.action_dim, sum(manifest.state_keys.values())),
            episode_start=np.array([s.start for s in episode_spans(manifest)]), chunk_frames=chunk_frames,
            attrs={**identity, **provenance, "identity": identity, "source_dataset": dataset,
                   "env": manifest.env, "variant": manifest.variant, "variant_seed": manifest.variant_seed,
                   "frame_size": manifest.frame_size, "image_format": manifest.image_format,
                   "action_space": manifest.action_space, "time_limit": manifest.time_limit,
                   "episodic": manifest.episodic, "collect_config": manifest.config,
                   "encode_config": cfg.model_dump(mode="json", exclude={"out", "workers", "scheduler", "threads",
                                                                          "loaders"}),
                   "pipeline_version": __version__})
    spans = episode_spans(manifest)
    done = embedding_store.units_done(partial)
    todo = [u for u in plan_units(total, chunk_frames) if u.index not in done]
    columns = (TextColumn(f"encode {spec.name}"), BarColumn(), MofNCompleteColumn(), TextColumn("frames"),
               TimeRemainingColumn())
    with Progress(*columns, disable=not show_progress) as progress:
        bar = progress.add_task("encode", total=total, completed=total - sum(u.stop - u.start for u in todo))
        if cfg.workers is None and cfg.scheduler is None:
            encode_units(cfg, encoder, dataset, spans, partial, todo, lambda n: progress.advance(bar, n))
        else:
            _encode_on_dask(cfg, dataset, spans, partial, todo, lambda n: progress.advance(bar, n))
    embedding_store.finish_store(out)
    return out


def _encode_on_dask(cfg: EncodeConfig, dataset: str, spans: list[EpisodeSpan], store_url: str,
                    todo: list[Unit], advance) -> None:
    from distributed import as_completed

    threads = cfg.threads or 1
    with dask_client(cfg.workers, cfg.scheduler, threads_per_worker=1) as client:
        futures = [client.submit(encode_unit_task, cfg, dataset, spans, store_url, unit, threads, pure=False)
                   for unit in todo]
        for future in as_completed(futures):
            record = future.result()
            advance(record["stop"] - record["start"])


def _check_existing(url: str, identity: dict, final: bool) -> bool:
    """True if `url` holds a store of this identity; a `UserError` if it holds something else."""
    fs, path = embedding_store.filesystem(url)
    if not fs.exists(path):
        return False
    if not fs.exists(f"{path}/zarr.json"):
        what = "a file" if fs.isfile(path) else "something that is not an embedding store"
        raise UserError(f"output '{url}' exists and is {what}; choose another --out or remove it")
    existing = embedding_store.open_store(url).attrs.get("identity", {})
    if existing != identity:
        changed = ", ".join(f"{k}: {existing.get(k)!r} -> {identity[k]!r}" for k in identity
                            if existing.get(k) != identity[k])
        kind = "store" if final else "interrupted encode"
        raise UserError(f"'{url}' holds an embedding {kind} made from another model, dataset or config "
                        f"({changed}); choose another --out or remove it first")
    if final:
        print(f"{url} is already complete", file=sys.stderr)
    return True

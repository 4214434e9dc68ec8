"""`pvr-pipe encode`: embed every frame of a trajectory dataset once with a frozen PVR.

Frames are numbered in dataset order (shard by shard, episode by episode). Work is split into
units of `chunk_frames` consecutive frames, aligned with the store's chunks so that no two units
write the same chunk; by default a chunk holds one trajectory shard's frames, so a unit is a
shard. A unit reads only the episodes it covers, decodes and preprocesses in a loader thread
while the model runs, writes its region of every array and records that it is done. Batches
start at the unit's first frame, so the bytes do not depend on how units are scheduled:
in-process, on a local Dask cluster (`workers`), or an existing one (`scheduler`).
"""

from __future__ import annotations

import hashlib
import io
import sys
from collections import defaultdict
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from pipeline import __version__
from pipeline.config import EncodeConfig
from pipeline.encoders import FrozenEncoder, get_spec
from pipeline.encoders.pixels import PIXEL_SIZE
from pipeline.errors import UserError
from pipeline.parallel import dask_client, prefetch
from pipeline.storage import embedding_store
from pipeline.storage.episode import STEP_ARRAYS
from pipeline.storage.manifest import TrajectoryManifest, read_manifest_bytes
from pipeline.storage.trajectory_reader import decode_frame, iter_raw_samples
from pipeline.storage.writer_lock import writer_lock

MAX_CHUNK_FRAMES = 8192


@dataclass(frozen=True)
class EpisodeSpan:
    shard: str
    key: str
    start: int   # index of the episode's first frame in the dataset
    frames: int
    shard_sha256: str   # the manifest's, checked as the shard streams in


@dataclass(frozen=True)
class Unit:
    index: int
    start: int
    stop: int


def episode_spans(manifest: TrajectoryManifest) -> list[EpisodeSpan]:
    spans, start = [], 0
    for shard in manifest.shards:
        for key, steps in zip(shard.episode_keys, shard.episode_steps):
            spans.append(EpisodeSpan(shard.name, key, start, steps + 1, shard.sha256))
            start += steps + 1
    return spans


def default_chunk_frames(manifest: TrajectoryManifest) -> int:
    """Frames per shard when every shard but the last holds the same number, else 1024."""
    per_shard = [shard.steps + shard.episodes for shard in manifest.shards]
    full = set(per_shard[:-1]) or {per_shard[-1]}
    return full.pop() if len(full) == 1 and max(per_shard) <= MAX_CHUNK_FRAMES else 1024


def plan_units(total_frames: int, chunk_frames: int) -> list[Unit]:
    return [Unit(i, start, min(start + chunk_frames, total_frames))
            for i, start in enumerate(range(0, total_frames, chunk_frames))]


def read_unit(dataset: str, spans: list[EpisodeSpan], unit: Unit,
              steps: dict[str, list[np.ndarray]], reads: str = "frames") -> Iterator[np.ndarray]:
    """Decoded frames [unit.start, unit.stop) in order (for `reads="state"`, the states); appends
    the step arrays' slices to `steps`. Every shard the unit touches is read to its end and
    checked against the manifest's sha256 before the unit's last frame is given (so before
    anything of the unit is written)."""
    wanted = [s for s in spans if s.start < unit.stop and s.start + s.frames > unit.start]
    for shard, sha256 in dict.fromkeys((s.shard, s.shard_sha256) for s in wanted):
        in_shard = {s.key: s for s in wanted if s.shard == shard}
        for key, sample in iter_raw_samples(f"{dataset}/{shard}", sha256):
            span = in_shard.pop(key, None)
            if span is None:
                continue
            lo, hi = max(unit.start, span.start) - span.start, min(unit.stop, span.start + span.frames) - span.start
            for name in STEP_ARRAYS:
                steps[name].append(np.load(io.BytesIO(sample[f"{name}.npy"]))[lo:hi])
            frame_fields = sorted(k for k in sample if k.startswith("frame."))
            if len(frame_fields) != span.frames:
                raise UserError(f"shard '{dataset}/{shard}' does not match its manifest "
                                f"({key}: {len(frame_fields)} frames, manifest says {span.frames})")
            if reads == "state":
                yield from steps["state"][-1]
            else:
                for field in frame_fields[lo:hi]:
                    try:
                        frame = decode_frame(sample[field])
                    except (OSError, SyntaxError, ValueError) as error:   # what PIL raises on broken images
                        raise UserError(f"shard '{dataset}/{shard}' is corrupt ({key}.{field} cannot be decoded: "
                                        f"{error}); re-collect the dataset or pull it again") from None
                    yield frame
        if in_shard:
            raise UserError(f"shard '{dataset}/{shard}' lacks episodes {sorted(in_shard)} listed in its "
                            "manifest; re-collect the dataset or pull it again")


def encode_units(cfg: EncodeConfig, encoder: FrozenEncoder, dataset: str, spans: list[EpisodeSpan],
                 store_url: str, units: list[Unit], on_batch=None) -> list[dict]:
    """Encode `units` in order, each written to its region of every array and marked done.

    One loader thread reads, decodes and preprocesses ahead across unit boundaries, so the
    model never waits for the first batch of the next unit.
    """
    def batches():
        for unit in units:
            steps: dict[str, list[np.ndarray]] = defaultdict(list)
            frames = read_unit(dataset, spans, unit, steps, encoder.spec.reads)
            while batch := list(islice(frames, cfg.batch_size)):
                yield unit, encoder.preprocess(np.stack(batch)), None
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
                   "encode_config": cfg.model_dump(mode="json", exclude={"out", "workers", "scheduler", "threads"}),
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

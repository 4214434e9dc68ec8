"""A dataset's frames in units of encoding work: the episodes a unit covers, and reading them.

Frames are numbered in dataset order (shard by shard, episode by episode); a unit is a run of
`chunk_frames` consecutive frames. Nothing here imports torch, so loader processes start fast.
"""

from __future__ import annotations

import io
from collections import defaultdict
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from pipeline.errors import UserError
from pipeline.storage.episode import STEP_ARRAYS
from pipeline.storage.manifest import TrajectoryManifest
from pipeline.storage.trajectory_reader import decode_frame, iter_raw_samples

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


def read_unit_arrays(job: tuple[str, list[EpisodeSpan], Unit, str]) -> tuple[np.ndarray, dict[str, list[np.ndarray]]]:
    """`read_unit` in a loader process: the unit's decoded frames as one array, and its step arrays."""
    dataset, spans, unit, reads = job
    steps: dict[str, list[np.ndarray]] = defaultdict(list)
    frames = np.stack(list(read_unit(dataset, spans, unit, steps, reads)))
    return frames, dict(steps)

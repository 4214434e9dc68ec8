"""Write episodes into WebDataset shards and manage a dataset directory while it is collected.

Shards are written by a child process while the simulator plays (`BackgroundShardWriter`).
A shard is written under a temporary name and renamed when complete. Which shards are complete
is recorded in `.progress.json` (with the config fingerprint), so an interrupted collection
resumes; `manifest.json` appears only when every shard is done.
"""

from __future__ import annotations

import io
import json
import multiprocessing
import os
import queue
import signal
import threading
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import webdataset as wds
from PIL import Image
from pydantic import BaseModel

from pipeline.errors import UserError
from pipeline.storage.atomic_files import temporary_path, write_json_atomic
from pipeline.storage.episode import STEP_ARRAYS, Episode
from pipeline.storage.manifest import MANIFEST_NAME, ShardRecord, TrajectoryManifest, sha256_file

PROGRESS_NAME = ".progress.json"
_PIL_FORMAT = {"png": "PNG", "jpeg": "JPEG"}
_EXTENSION = {"png": "png", "jpeg": "jpg"}


def shard_name(index: int) -> str:
    return f"shard-{index:06d}.tar"


def episode_key(index: int) -> str:
    return f"ep{index:07d}"


def encode_frame(frame: np.ndarray, image_format: str = "png", jpeg_quality: int = 95) -> bytes:
    # PNG at compress level 1: lossless, and ~2.5x faster to write than the default level 6.
    options = {"quality": jpeg_quality} if image_format == "jpeg" else {"compress_level": 1}
    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format=_PIL_FORMAT[image_format], **options)
    return buffer.getvalue()


def episode_arrays_sample(episode: Episode) -> dict[str, bytes]:
    """An episode's WebDataset sample without its frames: meta.json and one npy per step array."""
    sample = {"meta.json": json.dumps(episode.meta, sort_keys=True).encode()}
    for name in STEP_ARRAYS:
        buffer = io.BytesIO()
        np.save(buffer, getattr(episode, name), allow_pickle=False)
        sample[f"{name}.npy"] = buffer.getvalue()
    return sample


def frames_sample(encoded_frames: list[bytes], image_format: str) -> dict[str, bytes]:
    """An episode's frames as sample entries: one image per frame, in step order."""
    extension = _EXTENSION[image_format]
    return {f"frame.{t:06d}.{extension}": data for t, data in enumerate(encoded_frames)}


def write_shard(path: Path, samples: Iterable[tuple[str, dict[str, bytes]]]) -> tuple[str, int]:
    """Write (key, sample) pairs to `path` via a temporary file; return (sha256, size)."""
    tmp = temporary_path(path)
    try:
        with open(tmp, "wb") as f:
            # Fixed owner and mtime: the same episodes give the same bytes.
            writer = wds.TarWriter(f, user="pvr-pipe", group="pvr-pipe", encoder=False, mtime=0)
            for key, sample in samples:
                writer.write({"__key__": key, **sample})
            writer.close()
            f.flush()
            os.fsync(f.fileno())
    except OSError as error:   # a failed write does not say which file it was writing
        raise OSError(error.errno, error.strerror, error.filename or str(tmp)) from None
    os.replace(tmp, path)
    return sha256_file(path), path.stat().st_size


class BackgroundShardWriter:
    """Writes one shard in a child process while the caller plays its episodes.

    The caller hands over each frame as it is rendered and each episode's step arrays when it
    ends; the child encodes the frames (a chunk at a time, so the hand-over costs little per
    frame), builds the samples and writes the tar. For small frames PIL's writer and tarfile are
    mostly Python, so a thread would share the GIL with the simulator's Python; a process does
    not. The child is forked: it starts in milliseconds with these modules already imported,
    and runs only this module's code, never the parent's GL or simulator state.
    """

    def __init__(self, path: Path, image_format: str = "png", jpeg_quality: int = 95, chunk: int = 32):
        context = multiprocessing.get_context("fork")
        self.path, self.chunk = path, chunk
        inbox, self._inbox = context.Pipe(duplex=False)
        self._results, outbox = context.Pipe(duplex=False)
        self._process = context.Process(target=_write_shard_from_inbox, daemon=True, args=(
            path, image_format, jpeg_quality, inbox, outbox, (self._inbox, self._results)))
        _start_without_losing_ctrl_c(self._process)
        # Each end now lives in one process only, so either side sees the other one die
        # (EOFError, BrokenPipeError) instead of waiting on it.
        inbox.close()
        outbox.close()
        self._frames: list[np.ndarray] = []
        self._outgoing: queue.Queue = queue.Queue()
        self._sender = threading.Thread(target=self._send_in_order, daemon=True)
        self._sender.start()

    def add_frame(self, frame: np.ndarray) -> None:
        self._frames.append(frame)
        if len(self._frames) >= self.chunk:
            self._send_frames()

    def add_episode(self, key: str, episode: Episode) -> None:
        """The episode whose frames were the ones added since the previous episode."""
        self._send_frames()
        self._outgoing.put((key, episode_arrays_sample(episode)))

    def finish(self) -> tuple[str, int]:
        """Wait for the shard to be written; (sha256, size) as `write_shard` returns them."""
        self._outgoing.put(None)
        try:
            result = self._results.recv()
        except EOFError:
            self._process.join()
            raise RuntimeError(f"the process writing '{self.path}' died (exit code {self._process.exitcode}); "
                               "run the same command again to resume") from None
        if isinstance(result, BaseException):
            raise result
        return result

    def _send_frames(self) -> None:
        if self._frames:
            self._outgoing.put(np.stack(self._frames))
            self._frames = []

    def _send_in_order(self) -> None:
        # Sending waits while the child is busy; this thread keeps that wait out of the caller's loop.
        while (message := self._outgoing.get()) is not _STOP_SENDING:
            try:
                self._inbox.send(message)
            except OSError:  # the child is gone; finish() says so
                return

    def close(self) -> None:
        if self._process.is_alive():  # left before finish(): the partial file stays, as after a crash
            self._process.terminate()
        self._process.join()
        self._outgoing.put(_STOP_SENDING)
        self._sender.join()
        self._inbox.close()
        self._results.close()

    def __enter__(self) -> BackgroundShardWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


_STOP_SENDING = object()


def _start_without_losing_ctrl_c(process: multiprocessing.Process) -> None:
    """Fork `process`; a Ctrl-C during the fork is raised after it. Python would raise it in
    whatever runs then, e.g. logging's after-fork hook, which swallows it: collection went on
    to the end and exited 0."""
    if threading.current_thread() is not threading.main_thread():
        process.start()
        return
    caught: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        process.start()
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught and callable(previous):
        previous(signal.SIGINT, None)   # Python's default handler raises KeyboardInterrupt here


def _write_shard_from_inbox(path: Path, image_format: str, jpeg_quality: int, inbox: Connection,
                            outbox: Connection, parent_ends: tuple[Connection, Connection]) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the group; the parent stops this child
    for end in parent_ends:
        end.close()

    def samples():
        encoded: list[bytes] = []
        while (message := inbox.recv()) is not None:
            if isinstance(message, np.ndarray):
                encoded += [encode_frame(frame, image_format, jpeg_quality) for frame in message]
            else:
                key, sample = message
                yield key, sample | frames_sample(encoded, image_format)
                encoded = []

    try:
        result = write_shard(path, samples())
    except EOFError:  # the parent is gone: nobody to write for
        return
    except Exception as error:  # handed to the parent, which raises it
        result = error
    outbox.send(result)


class CollectionProgress(BaseModel):
    config: dict[str, Any]
    shards: dict[str, ShardRecord] = {}


class TrajectoryDatasetWriter:
    """The directory of one dataset while it is collected: resume, record shards, finish."""

    def __init__(self, root: Path, fingerprint: dict[str, Any]):
        self.root = Path(root)
        self.fingerprint = fingerprint
        self.progress = CollectionProgress(config=fingerprint)
        self.manifest: TrajectoryManifest | None = None  # set once the dataset is complete
        self._check_existing()

    def _check_existing(self) -> None:
        root = self.root
        if root.exists() and not root.is_dir():
            raise UserError(f"output '{root}' is a file; give a directory path for the dataset")
        if not root.exists():
            return
        manifest_path, progress_path = root / MANIFEST_NAME, root / PROGRESS_NAME
        if manifest_path.is_file():
            manifest = TrajectoryManifest.model_validate_json(manifest_path.read_text())
            self._require_same_config(manifest.config)
            self.manifest = manifest
        elif progress_path.is_file():
            existing = CollectionProgress.model_validate_json(progress_path.read_text())
            self._require_same_config(existing.config)
            self.progress = CollectionProgress(config=self.fingerprint, shards={
                name: record for name, record in existing.shards.items()
                if (root / name).is_file() and sha256_file(root / name) == record.sha256})
        elif any(root.iterdir()):
            raise UserError(f"output '{root}' exists and is not a pvr-pipe dataset; "
                            "choose an empty or new directory")

    def _require_same_config(self, existing: dict[str, Any]) -> None:
        if existing == self.fingerprint:
            return
        changed = sorted(k for k in existing.keys() | self.fingerprint.keys()
                         if existing.get(k) != self.fingerprint.get(k))
        diff = ", ".join(f"{k}: {existing.get(k)!r} -> {self.fingerprint.get(k)!r}" for k in changed)
        raise UserError(f"'{self.root}' already holds a dataset collected with a different config "
                        f"({diff}); choose another --out or delete it first")

    def is_done(self, index: int) -> bool:
        return shard_name(index) in self.progress.shards

    def shard_path(self, index: int) -> Path:
        return self.root / shard_name(index)

    def start(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise UserError(f"cannot create the output directory '{self.root}' ({error.strerror}); "
                            "choose a writable --out") from None
        write_json_atomic(self.root / PROGRESS_NAME, self.progress.model_dump(mode="json"))

    def record(self, record: ShardRecord) -> None:
        self.progress.shards[record.name] = record
        write_json_atomic(self.root / PROGRESS_NAME, self.progress.model_dump(mode="json"))

    def finish(self, **fields: Any) -> TrajectoryManifest:
        shards = [self.progress.shards[name] for name in sorted(self.progress.shards)]
        manifest = TrajectoryManifest(
            shards=shards, config=self.fingerprint,
            episodes=sum(s.episodes for s in shards), steps=sum(s.steps for s in shards),
            frames=sum(s.steps + s.episodes for s in shards), **fields)
        write_json_atomic(self.root / MANIFEST_NAME, manifest.model_dump(mode="json"))
        (self.root / PROGRESS_NAME).unlink()
        self.manifest = manifest
        return manifest

"""One writer per artifact: a lock file beside the output, naming its owner.

`<output>.lock` is locked (flock) before anything of the output is written, and removed on every
exit of the writing command (an error, Ctrl-C). The kernel drops the lock of a command killed
outright, so its leftover file is taken over by the next writer on the same host. A file whose
owner ran on another host (a shared filesystem) is reported with its owner and how to clear it,
since this host cannot tell whether that writer still runs. Outputs given as remote fsspec URLs
are not locked.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from pathlib import Path
from typing import Iterator

from pipeline.errors import UserError


def lock_path(output: str | Path) -> Path:
    return Path(str(output).rstrip("/") + ".lock")


@contextlib.contextmanager
def writer_lock(output: str | Path, command: str) -> Iterator[None]:
    if "://" in str(output) and not str(output).startswith("file://"):
        yield
        return
    path = lock_path(str(output).removeprefix("file://"))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"cannot create the output directory '{path.parent}' ({error.strerror}); "
                        "choose another --out") from None
    owner = {"host": socket.gethostname(), "pid": os.getpid(), "command": command,
             "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    descriptor = _acquire(path, output, owner["host"])
    try:
        try:
            os.ftruncate(descriptor, 0)
            os.write(descriptor, json.dumps(owner).encode())
        except OSError as error:   # a full disk: say which file
            raise OSError(error.errno, error.strerror, str(path)) from None
        yield
    finally:
        path.unlink(missing_ok=True)   # still locked: no other writer can be using this file
        os.close(descriptor)


def _acquire(path: Path, output, host: str) -> int:
    """A descriptor of `path` holding its lock, or a `UserError` saying who holds it."""
    while True:
        descriptor = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(descriptor)
            raise UserError(_held_message(output, path, _read_owner(path), host)) from None
        if os.fstat(descriptor).st_ino != _inode(path):   # its last holder removed it as we opened it
            os.close(descriptor)
            continue
        held = _read_owner(path)
        if held is not None and held.get("host", host) != host:
            os.close(descriptor)
            raise UserError(_held_message(output, path, held, host))
        return descriptor


def _inode(path: Path) -> int | None:
    try:
        return os.stat(path).st_ino
    except FileNotFoundError:
        return None


def _read_owner(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):   # gone, or being written this very moment
        return None


def _held_message(output, path: Path, held: dict | None, host: str) -> str:
    if held is None:
        return f"'{output}' is being written by another command (lock {path}); wait for it to finish"
    who = f"`pvr-pipe {held.get('command')}` (pid {held.get('pid')} on {held.get('host')}, since {held.get('since')})"
    if held.get("host") == host:
        return f"'{output}' is being written by {who}; wait for it to finish, or stop it first"
    return (f"'{output}' is locked by {who}; if that command no longer runs there, delete {path} "
            "and rerun")

"""One writer per artifact: an exclusive lock file beside the output, naming its owner.

`<output>.lock` is created with O_EXCL before anything of the output is written and removed on
every exit of the writing command (an error, Ctrl-C). A command killed outright leaves its lock;
the next writer on the same host sees that the owner's process is gone and takes it over. A
lock held on another host is reported with its owner and how to clear it, since this host
cannot tell whether that writer still runs. Outputs given as remote fsspec URLs are not locked.
"""

from __future__ import annotations

import contextlib
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
    while True:
        try:
            descriptor = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            held = _read_owner(path)
            if held is not None and held.get("host") == owner["host"] and not _alive(held.get("pid")):
                path.unlink(missing_ok=True)   # its writer died on this host: take over
                continue
            raise UserError(_held_message(output, path, held, owner["host"])) from None
        with os.fdopen(descriptor, "w") as file:
            json.dump(owner, file)
        break
    try:
        yield
    finally:
        if _read_owner(path) == owner:
            path.unlink(missing_ok=True)


def _read_owner(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):   # gone, or being written this very moment
        return None


def _alive(pid) -> bool:
    if not isinstance(pid, int):
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:   # another user's process
        return True
    return True


def _held_message(output, path: Path, held: dict | None, host: str) -> str:
    if held is None:
        return f"'{output}' is being written by another command (lock {path}); wait for it to finish"
    who = f"`pvr-pipe {held.get('command')}` (pid {held.get('pid')} on {held.get('host')}, since {held.get('since')})"
    if held.get("host") == host:
        return f"'{output}' is being written by {who}; wait for it to finish, or stop it first"
    return (f"'{output}' is locked by {who}; if that command no longer runs there, delete {path} "
            "and rerun")

"""One writer per output directory: a lock file beside it.

``writer_lock(DIR)`` creates ``DIR.lock`` (beside ``DIR``, so it outlives any rename of
the directory itself) holding the host, process id, process start time and command of
the writer, and removes it when the writer ends. A second writer is refused with
``RunLockedError`` naming the holder. A lock left by a process of this host that no longer
runs (killed with SIGKILL, a machine that lost power) is taken over with a warning; a lock
of another host cannot be checked from here and is never taken over.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from statewise.errors import RunLockedError

UNREADABLE_GRACE_S = 2.0  # a lock being written right now is unreadable for a moment


class StaleLockWarning(UserWarning):
    """A lock of a process that has died was taken over."""


def lock_path(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(out.name + ".lock")


def _process_start(pid: int) -> str | None:
    """The start time of process ``pid`` in clock ticks since boot (Linux), which tells a
    reused pid from the writer's; None where /proc does not say."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[-1].split()[19]


def _alive(holder: dict[str, Any]) -> bool:
    pid = holder.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it exists
        return True
    started = holder.get("process_start")
    return started is None or _process_start(pid) in (None, started)


def _read(path: Path) -> dict[str, Any] | None:
    try:
        holder = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return holder if isinstance(holder, dict) else None


def _describe(holder: dict[str, Any]) -> str:
    return (
        f"process {holder.get('pid')} on host {holder.get('host')!r} "
        f"({holder.get('command', '?')}, since {holder.get('started', '?')})"
    )


def _create(path: Path, info: dict[str, Any]) -> bool:
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(info, f)
        f.flush()
        os.fsync(f.fileno())
    return True


def acquire(out: str | Path, command: str) -> dict[str, Any]:
    """Take the lock of ``out``; RunLockedError if a live process holds it."""
    path = lock_path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    info = {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "process_start": _process_start(os.getpid()),
        "command": command,
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "token": secrets.token_hex(8),
    }
    deadline = time.monotonic() + UNREADABLE_GRACE_S
    while not _create(path, info):
        holder = _read(path)
        if holder is None:
            if time.monotonic() < deadline:
                time.sleep(0.05)
                continue
            raise RunLockedError(
                f"{out} is locked by {path}, which cannot be read; if no statewise "
                "process writes to it, delete the lock file"
            )
        if holder.get("host") != info["host"] or _alive(holder):
            raise RunLockedError(
                f"{out} is being written by {_describe(holder)}; wait for it to finish or "
                f"choose another --out (lock: {path})"
            )
        # stale: move it to a name of our own; only one of two racing writers succeeds
        claimed = path.with_name(f"{path.name}.stale-{info['token']}")
        try:
            path.rename(claimed)
        except FileNotFoundError:
            continue
        if _read(claimed) != holder:  # another writer replaced it meanwhile: put it back
            with contextlib.suppress(OSError):
                os.link(claimed, path)
            claimed.unlink(missing_ok=True)
            continue
        claimed.unlink(missing_ok=True)
        warnings.warn(
            f"took over the lock of {out} from {_describe(holder)}, which is no longer running",
            StaleLockWarning,
            stacklevel=3,
        )
    return info


def release(out: str | Path, info: dict[str, Any]) -> None:
    """Remove the lock of ``out`` if it is still the one ``acquire`` returned."""
    path = lock_path(out)
    if _read(path) == info:
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def writer_lock(out: str | Path, command: str | None = None) -> Iterator[dict[str, Any]]:
    """Hold the lock of ``out`` for the body of the ``with``."""
    info = acquire(out, command or " ".join(["statewise", *sys.argv[1:2]]))
    try:
        yield info
    finally:
        release(out, info)

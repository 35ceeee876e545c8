"""Exclusive locks for work that two processes must never do at once (one run's training phase).

A hard kill of Snakemake (SIGKILL, a lost terminal or node) leaves its jobs
running as orphans; after ``snakemake --unlock`` a rerun would start the same
job beside its orphan, and both would write the same checkpoint and outputs.
:func:`hold` prevents that: it takes an exclusive OS lock (``flock``, through
the ``filelock`` library) on a lock file without waiting, and fails at once
with :class:`LockHeldError` when another process holds it.

The OS releases the lock when its process ends, however it ends, so a killed
job never leaves a stale lock. The empty lock file stays after release:
deleting a lock file that another process may be opening at that moment would
let two processes lock two different files of the same name.

Who holds the lock is written beside it, to ``<lock file>.holder`` (JSON:
``pid``, ``host``, ``since``), so a process that finds the lock taken can
name the process to wait for or kill; the holder deletes it on release (a
killed holder's is replaced by the next holder's).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HOLDER_SUFFIX = ".holder"


class LockHeldError(RuntimeError):
    """Another process holds the lock; the message names it and says what to do."""

    def __init__(self, what: str, lock_file: Path, holder: dict[str, Any] | None) -> None:
        self.what, self.lock_file, self.holder = what, lock_file, holder
        if holder:
            who = f"pid {holder.get('pid')} on host {holder.get('host')}, since {holder.get('since')}"
            kill = f"`kill {holder.get('pid')}`" + (
                "" if holder.get("host") == socket.gethostname() else " on that host"
            )
        else:
            who = "a process that has not recorded its pid yet"
            kill = f"find it with `fuser {lock_file}`"
        super().__init__(
            f"{what} is already running in another process ({who}; lock file {lock_file}). "
            f"Nothing was written or deleted. Wait for that process to finish, or stop it ({kill}), "
            "then run the workflow again."
        )


def holder_file(lock_file: str | os.PathLike) -> Path:
    """Where the holder of ``lock_file`` records its pid and host."""
    lock_file = Path(lock_file)
    return lock_file.with_name(lock_file.name + HOLDER_SUFFIX)


def read_holder(lock_file: str | os.PathLike) -> dict[str, Any] | None:
    """The holder record of ``lock_file`` (pid, host, since), or None when there is none or it is unreadable."""
    try:
        record = json.loads(holder_file(lock_file).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


@contextlib.contextmanager
def hold(lock_file: str | os.PathLike, what: str) -> Iterator[Path]:
    """Hold the exclusive lock on ``lock_file`` for the ``with`` block, or raise :class:`LockHeldError` at once.

    ``what`` names the work in the error message (e.g. ``the poison phase of run X``).
    """
    from filelock import FileLock, Timeout

    from backdoor_eval.io import write_json

    lock_file = Path(lock_file)
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(lock_file, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise LockHeldError(what, lock_file, read_holder(lock_file)) from None
    record = holder_file(lock_file)
    try:
        since = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime())
        write_json(record, {"pid": os.getpid(), "host": socket.gethostname(), "since": since})
        yield lock_file
    finally:
        record.unlink(missing_ok=True)
        lock.release()


def is_held(lock_file: str | os.PathLike) -> bool:
    """Whether some process holds the lock on an existing ``lock_file`` now (a probe: taken and released at once)."""
    from filelock import FileLock, Timeout

    lock_file = Path(lock_file)
    if not lock_file.is_file():
        return False
    lock = FileLock(lock_file, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        return True
    lock.release()
    return False


def held_locks(root: str | os.PathLike, pattern: str = "*.lock") -> list[Path]:
    """The lock files matching ``pattern`` under ``root`` that a process holds now, sorted."""
    root = Path(root)
    if not root.is_dir():
        return []
    return [path for path in sorted(root.rglob(pattern)) if is_held(path)]

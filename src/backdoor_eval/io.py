"""Atomic file output: every file is written to a temporary sibling and renamed.

A killed job therefore never leaves a half-written output that Snakemake or a
later run would mistake for a finished one.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates 0600 files; give the result the permissions a plain open() would.
        os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def remove_stale_temporaries(root: str | os.PathLike, keep: Iterable[str | os.PathLike] = ()) -> tuple[int, int]:
    """Delete what killed writes left under ``root``: the ``.<name>.<random>.tmp`` files and folders
    of :func:`atomic_path`/:func:`atomic_dir`, except inside the folders ``keep``. Returns ``(count, bytes)`` removed.

    Only safe while nothing writes under ``root`` outside ``keep`` (the workflow calls it before its first
    job, keeping the folders of phases that a process left over from a killed run still holds; Snakemake's
    lock keeps a second run out of the folder).
    """
    count = size = 0
    root = Path(root)
    if not root.is_dir():
        return 0, 0
    kept = {Path(folder).resolve() for folder in keep}
    for path in sorted(root.rglob(".*.tmp"), key=lambda p: len(p.parts), reverse=True):
        if not path.exists() or not path.name.startswith("."):
            continue
        if kept and not kept.isdisjoint(path.resolve().parents):
            continue
        if path.is_dir() and not path.is_symlink():
            size += sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
            shutil.rmtree(path)
        else:
            size += path.lstat().st_size
            path.unlink()
        count += 1
    return count, size


def check_writable(path: str | os.PathLike, option: str) -> None:
    """Raise a ``ValueError`` naming ``option`` and ``path`` when ``path`` could not be written: a
    file stands where one of its folders should be, or the nearest existing folder is not writable.

    Creates nothing: the commands call it on every output before any work, so a phase that
    cannot write its model fails at once rather than after training.
    """
    path = Path(path)
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ValueError(f"{option} {path} cannot be written: {ancestor} is a file, not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ValueError(f"{option} {path} cannot be written: no permission to write in {ancestor}")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory next to ``path``; move it onto ``path`` on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        # mkdtemp creates 0700 folders; give the result the permissions a plain mkdir() would.
        os.chmod(tmp, 0o777 & ~_umask())
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def read_json(path: str | os.PathLike, what: str = "JSON file", rebuild: str | None = None) -> Any:
    """The JSON document in ``path``; a corrupt file is a ``ValueError`` naming it (see :func:`reading`)."""
    with reading(path, what, rebuild):
        return json.loads(Path(path).read_text())


# What reading a garbage, truncated or foreign file raises (np.load, zip, json).
CORRUPT_FILE_ERRORS = (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError, UnicodeDecodeError)


@contextlib.contextmanager
def reading(path: str | os.PathLike, what: str, rebuild: str | None = None) -> Iterator[None]:
    """Turn the error of a corrupt or truncated file read inside into one ``ValueError`` naming the file.

    ``rebuild`` says how to make the file again (e.g. the workflow rule that writes it).
    A missing file stays a ``FileNotFoundError``.
    """
    try:
        yield
    except FileNotFoundError:
        raise
    except CORRUPT_FILE_ERRORS as exc:
        how = rebuild or "delete it and run the step that writes it again"
        raise ValueError(f"{os.fspath(path)} is not a readable {what} ({type(exc).__name__}: {exc}); {how}") from None


def rebuild_hint(rule: str) -> str:
    """How to rebuild a workflow output that is corrupt (Snakemake keeps a finished job's file)."""
    return f"delete it and run the workflow again (or add `--forcerun {rule}`) to rebuild it"


def write_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.save(fh, array)


def write_npz(path: str | os.PathLike, **arrays: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **arrays)


def write_parquet(path: str | os.PathLike, frame) -> None:
    with atomic_path(path) as tmp:
        frame.to_parquet(tmp, index=False)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot serialise {type(obj).__name__} to JSON")

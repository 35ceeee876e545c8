"""Atomic file output: every file is written to a temporary sibling and renamed.

A killed job therefore never leaves a half-written output that Snakemake or a
later run would mistake for a finished one.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import re
import shutil
import stat
import tempfile
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` on success.

    ``path`` must be new or a regular file (:func:`check_output_target`): a symbolic link, a device
    or a folder there is refused, not replaced. A write that fails for want of space is an
    ``OSError`` (ENOSPC) naming ``path`` and the space left (:func:`disk_full_error`).
    """
    path = Path(path)
    check_output_target(path, folder=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates 0600 files; give the result the permissions a plain open() would.
        os.chmod(tmp_path, 0o666 & ~_umask())
        check_output_target(path, folder=False)  # nothing put a link or a device there meanwhile
        os.replace(tmp_path, path)
    except (OSError, RuntimeError) as exc:
        full = disk_full_error(path, exc)
        if full is None:
            raise
        raise full from exc
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


# What the kinds of file that are not outputs are called in messages.
_SPECIAL_FILES = (
    (stat.S_ISLNK, "a symbolic link"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISFIFO, "a named pipe"),
    (stat.S_ISSOCK, "a socket"),
)


def check_output_target(path: str | os.PathLike, folder: bool | None = None, option: str | None = None) -> None:
    """Refuse to write over anything but a regular file (``folder=False``) or a real folder (``folder=True``;
    ``None``: either): a symbolic link, a device node, a pipe or a socket at ``path`` is a ``ValueError``
    naming it, so that an output never replaces ``/dev/null`` or what a link points to.
    """
    path = Path(path)
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    except OSError:
        return  # unreadable: the write itself names the reason
    what = next((name for test, name in _SPECIAL_FILES if test(mode)), None)
    if what is None and folder is False and stat.S_ISDIR(mode):
        what = "a folder"
    if what is None and folder is True and stat.S_ISREG(mode):
        what = "a file"
    if what is None:
        return
    if stat.S_ISLNK(mode):
        what += f" (to {os.readlink(path)!r})"
    label = f"{option} {path}" if option else str(path)
    allowed = "a new path or a regular file" if not folder else "a new path or a folder"
    raise ValueError(f"{label} is {what}; outputs are written only to {allowed}: remove it or choose another path")


def disk_full_error(path: str | os.PathLike, exc: BaseException) -> OSError | None:
    """An ``OSError`` (ENOSPC) naming ``path`` and the free space when ``exc`` is a write that ran out of
    space: ENOSPC or EDQUOT, NumPy's short write (``N requested and M written``) or ``torch.save``'s
    (``PytorchStreamWriter failed writing file ...``); else ``None``."""
    text = str(exc)
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        reason = "no space left on the disk" if exc.errno == errno.ENOSPC else "the disk quota is exceeded"
    elif isinstance(exc, OSError) and exc.errno is None and re.search(r"\d+ requested and \d+ written", text):
        reason = f"a short write ({text}): the disk is full"
    elif isinstance(exc, RuntimeError) and (
        "PytorchStreamWriter failed writing" in text or "file write failed" in text
    ):
        reason = "torch.save could not write it (file write failed): the disk is full"
    else:
        return None
    folder = Path(path).parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        free = f"{_megabytes(shutil.disk_usage(folder).free)} free on the disk holding {folder}"
    except OSError:
        free = f"the free space on the disk holding {folder} is unknown"
    return OSError(errno.ENOSPC, f"{reason}; {free}. Free some space and run again", os.fspath(path))


def _megabytes(size: int) -> str:
    return f"{size / 1e6:.1f} MB"


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
    check_output_target(path, option=option)
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
    check_output_target(path, folder=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        # mkdtemp creates 0700 folders; give the result the permissions a plain mkdir() would.
        os.chmod(tmp, 0o777 & ~_umask())
        check_output_target(path, folder=True)
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except OSError as exc:
        # A full disk while writing a file inside: name the file where it is to end up, not the temporary.
        inner = exc.filename
        if exc.errno == errno.ENOSPC and isinstance(inner, str) and Path(inner).is_relative_to(tmp):
            raise OSError(exc.errno, exc.strerror, os.fspath(path / Path(inner).relative_to(tmp))) from exc
        raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """``obj`` as standard JSON: a NaN or infinite number is written ``null`` (``NaN`` is not JSON;
    other readers than Python's refuse it)."""
    text = json.dumps(_finite(obj), indent=2, sort_keys=True, default=_json_default, allow_nan=False)
    with atomic_path(path) as tmp:
        tmp.write_text(text + "\n")


def _finite(obj: Any) -> Any:
    """``obj`` with every non-finite float (Python's or NumPy's) replaced by ``None``."""
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {key: _finite(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(value) for value in obj]
    if isinstance(obj, np.ndarray) and np.issubdtype(obj.dtype, np.floating):
        return _finite(obj.tolist())
    return obj


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

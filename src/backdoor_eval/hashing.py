"""Checksums and fingerprints: the one place the package hashes files, arrays and settings.

- :func:`file_digest`: a file's md5 (download checks) or sha256 (fit files);
- :func:`array_sha256` / :func:`arrays_sha256`: arrays' C-order bytes,
  read in slices so a memory-mapped store is never loaded whole (store
  manifests, the partitions an overlay was made for);
- :func:`json_sha256`: settings as canonical JSON (the fingerprint that keeps
  a checkpoint from being resumed under other settings).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from typing import Any

import numpy as np

# Bytes hashed at once: bounds memory on memory-mapped arrays.
SLICE_BYTES = 1 << 26


def file_digest(path: str | os.PathLike, algorithm: str = "sha256") -> str:
    """Hex digest of a file's bytes (``algorithm``: any hashlib name, e.g. md5 or sha256)."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, algorithm).hexdigest()


def _update(digest: Any, array: np.ndarray) -> None:
    flat = np.ascontiguousarray(array).reshape(-1).view(np.uint8)
    for start in range(0, flat.size, SLICE_BYTES):
        digest.update(flat[start : start + SLICE_BYTES])


def array_sha256(array: np.ndarray) -> str:
    """sha256 of an array's C-order bytes (dtype and shape are recorded beside it)."""
    digest = hashlib.sha256()
    _update(digest, array)
    return digest.hexdigest()


def arrays_sha256(named_arrays: Iterable[tuple[str, np.ndarray]]) -> str:
    """sha256 of several named arrays: each name's UTF-8 bytes, then the array's bytes, in order."""
    digest = hashlib.sha256()
    for name, array in named_arrays:
        digest.update(name.encode())
        _update(digest, array)
    return digest.hexdigest()


def json_sha256(value: Any) -> str:
    """sha256 of ``value`` as JSON with sorted keys (non-JSON values as their ``str``)."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()

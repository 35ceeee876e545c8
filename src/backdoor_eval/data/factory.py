"""The dataset registry ``DATASETS``, its factory ``create_dataset``, and the archives datasets download.

Each dataset is a class registered under its name (one module per dataset
in ``backdoor_eval.data.readers``) with ``__init__(**params)``, a ``params``
dict (every parameter, defaults filled in) and
``load(progress: bool) -> RawDataset``; a reader that downloads its archive also
has ``remote_archive() -> RemoteArchive | None`` (:func:`remote_archive`,
:func:`fetch_archive`: the workflow's ``fetch_dataset`` rule).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from backdoor_eval.registry import Registry

DATASETS: Registry[type] = Registry("dataset")


def create_dataset(name: str, params: dict[str, Any] | None = None) -> Any:
    """Build the registered dataset ``name`` from ``params`` (``DATASETS.create``: names an unknown parameter)."""
    return DATASETS.create(name, **dict(params or {}))


def remote_archive(name: str, params: dict[str, Any] | None = None) -> Any:
    """The ``RemoteArchive`` (url, md5, path) dataset ``name`` with ``params`` downloads, or ``None``
    (a local ``path``, a generated dataset)."""
    method = getattr(create_dataset(name, params), "remote_archive", None)
    return None if method is None else method()


def fetch_archive(name: str, params: dict[str, Any] | None, out: str | os.PathLike, progress: bool = True) -> Path:
    """Download the archive of dataset ``name`` with ``params`` to ``out``, which must be where its reader
    reads it (``<cache_dir>/<file name>``); md5-checked, atomic, reused when already there."""
    from .download import download

    archive = remote_archive(name, params)
    if archive is None:
        raise ValueError(
            f"dataset {name!r} with these params reads a local path or downloads nothing; nothing to fetch"
        )
    if Path(out).resolve() != archive.path.resolve():
        raise ValueError(
            f"--out {out} is not where dataset {name!r} reads its archive; expected {archive.path} "
            "(cache_dir and the URL's file name)"
        )
    return download(archive.url, archive.path.parent, archive.md5, progress)


def registered_name(cls: type) -> str:
    """The name ``cls`` is registered under (its class name if it is not registered)."""
    return next((n for n in DATASETS.names() if DATASETS.get(n) is cls), cls.__name__)


__all__ = ["DATASETS", "create_dataset", "fetch_archive", "registered_name", "remote_archive"]

"""Datasets and the canonical store (paper section 2.1; docs/decisions.md#datasets).

Every dataset, whatever its source, is ingested once into one canonical
*store* (``images.npy``, ``labels.npy``, ``manifest.json``; see
``backdoor_eval.data.store``). Everything downstream (partitions, poisoning,
training) reads the store, never the original archive. The datasets
(registry ``DATASETS``, one module each in ``backdoor_eval.data.readers``):

- ``cifar10``: the official ``cifar-10-python.tar.gz`` (downloaded or local),
  read from the tar without extracting; train and test pooled.
- ``imagefolder``: a zip or folder laid out ``<root>/[split/]<class>/<image>``.
- ``flowers``: ``imagefolder`` with the Flowers defaults (224 x 224, the size
  the paper trains at).
- ``synthetic``: a small procedurally generated task, the offline default.

Modules:

- ``factory``: the registry ``DATASETS``, ``create_dataset``, and ``remote_archive`` /
  ``fetch_archive`` (the archive a reader downloads, fetched by the workflow's ``fetch_dataset`` rule);
- ``store``: ``RawDataset``, ``Store``, ``ingest``, ``open_store``, ``describe``,
  ``known_class_counts`` (class sizes before ingest, for the dry run's checks);
- ``download``: ``download`` into a cache (nothing with downloads off), ``RemoteArchive`` and md5 checks;
- ``decode``: the parallel image decoding pool (``decode_images``);
- ``readers``: one module per registered dataset.

The names below are the package's public API; import them from here.
"""

from __future__ import annotations

from .decode import decode_images
from .download import DEFAULT_CACHE_DIR, RemoteArchive, check_md5, download
from .factory import DATASETS, create_dataset, fetch_archive, remote_archive
from .readers import Cifar10, Flowers, ImageFolder, Synthetic, make_synthetic
from .store import STORE_FORMAT_VERSION, RawDataset, Store, describe, ingest, known_class_counts, open_store

__all__ = [
    "DATASETS",
    "RawDataset",
    "Store",
    "ingest",
    "open_store",
    "known_class_counts",
    "create_dataset",
    "remote_archive",
    "fetch_archive",
    "RemoteArchive",
    "decode_images",
    "make_synthetic",
    "check_md5",
    "download",
    "describe",
    "Cifar10",
    "ImageFolder",
    "Flowers",
    "Synthetic",
    "STORE_FORMAT_VERSION",
    "DEFAULT_CACHE_DIR",
]

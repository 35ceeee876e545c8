"""The canonical store: one folder per ingested dataset (docs/decisions.md#datasets).

- ``images.npy``: ``uint8`` ``(N, H, W, 3)``, memory-mappable;
- ``labels.npy``: ``int64`` ``(N,)``, class indices into ``class_names``;
- ``manifest.json``: ``dataset``, ``params`` (with defaults filled in),
  ``num_images``, ``image_shape`` ``[H, W, 3]``, ``class_names``,
  ``class_counts`` (aligned with ``class_names``), ``sha256`` of both arrays
  (over their C-order bytes), and ``source`` (where the pixels came from:
  archive path or URL, its md5, layout, skipped files).

``RawDataset`` is what a dataset's ``load`` returns; ``ingest`` writes it as
a store and ``open_store`` reads one back as a ``Store``.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from backdoor_eval.hashing import array_sha256
from backdoor_eval.io import atomic_dir, read_json, reading, rebuild_hint, write_json, write_npy

from .factory import create_dataset

log = logging.getLogger(__name__)

STORE_FORMAT_VERSION = 1


@dataclass(frozen=True)
class RawDataset:
    """What ``Dataset.load`` returns: pixels, labels, class names, provenance."""

    images: np.ndarray  # uint8 (N, H, W, 3)
    labels: np.ndarray  # int64 (N,), indices into class_names
    class_names: list[str]
    source: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        images, labels = self.images, self.labels
        if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(
                f"images must be a uint8 array of shape (N, H, W, 3), got "
                f"{getattr(images, 'dtype', type(images).__name__)} {getattr(images, 'shape', '')}"
            )
        if not isinstance(labels, np.ndarray) or labels.dtype != np.int64 or labels.shape != (images.shape[0],):
            raise ValueError(
                f"labels must be an int64 array of shape ({images.shape[0]},), got "
                f"{getattr(labels, 'dtype', type(labels).__name__)} {getattr(labels, 'shape', '')}"
            )
        if len(self.class_names) < 2:
            raise ValueError(f"a dataset needs at least 2 classes, got {list(self.class_names)}")
        if len(set(self.class_names)) != len(self.class_names):
            raise ValueError(f"class names must be unique, got {list(self.class_names)}")
        if labels.size and (labels.min() < 0 or labels.max() >= len(self.class_names)):
            raise ValueError(
                f"labels must lie in [0, {len(self.class_names) - 1}], got [{labels.min()}, {labels.max()}]"
            )


@dataclass(frozen=True)
class Store:
    """An ingested dataset: read-only memory-mapped images plus labels and manifest."""

    root: Path
    images: np.ndarray  # read-only memmap, uint8 (N, H, W, 3)
    labels: np.ndarray  # read-only int64 (N,)
    class_names: list[str]
    manifest: dict[str, Any]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def num_images(self) -> int:
        return int(self.labels.shape[0])

    @property
    def class_counts(self) -> list[int]:
        return [int(c) for c in np.bincount(self.labels, minlength=self.num_classes)]

    def class_index(self, name_or_int: str | int) -> int:
        """Index of a class given its name, its index, or its index as a digit string.

        A name wins over a digit string, so a dataset whose classes are
        called ``"0"``, ``"1"``, ... is read by name.
        """
        allowed = f"a class name ({', '.join(self.class_names)}) or an index 0..{self.num_classes - 1}"
        if isinstance(name_or_int, (bool, np.bool_)):
            raise ValueError(f"class {name_or_int!r} is not {allowed}")
        if isinstance(name_or_int, (int, np.integer)):
            index = int(name_or_int)
        elif isinstance(name_or_int, str):
            if name_or_int in self.class_names:
                return self.class_names.index(name_or_int)
            if not re.fullmatch(r"\d+", name_or_int.strip()):
                raise ValueError(f"unknown class {name_or_int!r}; expected {allowed}")
            index = int(name_or_int.strip())
        else:
            raise ValueError(f"class {name_or_int!r} is not {allowed}")
        if not 0 <= index < self.num_classes:
            raise ValueError(f"class index {index} is out of range; expected {allowed}")
        return index


def ingest(name: str, params: dict[str, Any] | None, out_dir: str | os.PathLike, progress: bool = True) -> Store:
    """Load dataset ``name`` with ``params`` and write its store to ``out_dir`` atomically."""
    dataset = create_dataset(name, params)
    raw = dataset.load(progress=progress)
    images = np.ascontiguousarray(raw.images)
    labels = np.ascontiguousarray(raw.labels)
    manifest = {
        "format_version": STORE_FORMAT_VERSION,
        "dataset": name,
        "params": dataset.params,
        "num_images": int(labels.shape[0]),
        "image_shape": [int(s) for s in images.shape[1:]],
        "class_names": list(raw.class_names),
        "class_counts": [int(c) for c in np.bincount(labels, minlength=len(raw.class_names))],
        "sha256": {"images": array_sha256(images), "labels": array_sha256(labels)},
        "source": raw.source,
    }
    with atomic_dir(out_dir) as tmp:
        write_npy(tmp / "images.npy", images)
        write_npy(tmp / "labels.npy", labels)
        write_json(tmp / "manifest.json", manifest)
    log.debug(
        "ingested %s: %d images of %s, %d classes -> %s",
        name,
        manifest["num_images"],
        "x".join(map(str, manifest["image_shape"])),
        len(raw.class_names),
        out_dir,
    )
    return open_store(out_dir)


def known_class_counts(store_dir: str | os.PathLike, name: str, params: dict[str, Any] | None) -> list[int] | None:
    """Images per class of dataset ``name`` with ``params``, if known without ingesting it; else ``None``.

    From the store's manifest when ``store_dir`` holds the same dataset with
    the same parameters, else from the reader when its parameters settle it
    (``synthetic``, the official CIFAR-10 archive). Reads no image.
    """
    manifest_path = Path(store_dir) / "manifest.json"
    if manifest_path.is_file():
        try:
            manifest = read_json(manifest_path, "store manifest", rebuild_hint("ingest"))
        except ValueError:
            manifest = None  # a corrupt manifest is named by the ingest or the job that reads it
        if (
            isinstance(manifest, dict)
            and manifest.get("dataset") == name
            and all(manifest.get("params", {}).get(key) == value for key, value in (params or {}).items())
            and isinstance(manifest.get("class_counts"), list)
        ):
            return [int(count) for count in manifest["class_counts"]]
    counts = getattr(create_dataset(name, params), "known_class_counts", None)
    return None if counts is None else counts()


def open_store(path: str | os.PathLike, verify: bool = False) -> Store:
    """Open the store in ``path``; ``images`` is a read-only memmap.

    Checks that the three files exist and agree with each other; with
    ``verify=True`` also recomputes the sha256 of both arrays, so an edited
    ``labels.npy`` of the right shape is found (the train and retrain jobs
    verify: about 0.7 s for a store of the Flowers size, 4,317 images of
    224 x 224, against minutes to hours of training).
    """
    root = Path(path)
    missing = [n for n in ("images.npy", "labels.npy", "manifest.json") if not (root / n).is_file()]
    if missing:
        raise ValueError(
            f"{root} is not a dataset store: missing {', '.join(missing)} (create one with `backdoor-eval ingest`)"
        )
    manifest = read_json(root / "manifest.json", "store manifest", rebuild_hint("ingest"))
    with reading(root / "images.npy", "store image array", rebuild_hint("ingest")):
        images = np.load(root / "images.npy", mmap_mode="r")
    with reading(root / "labels.npy", "store label array", rebuild_hint("ingest")):
        labels = np.load(root / "labels.npy")
    labels.flags.writeable = False
    class_names = list(manifest.get("class_names", []))
    problems = []
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        problems.append(f"images.npy is {images.dtype} {images.shape}, expected uint8 (N, H, W, 3)")
    if labels.dtype != np.int64 or labels.shape != (images.shape[0],):
        problems.append(f"labels.npy is {labels.dtype} {labels.shape}, expected int64 ({images.shape[0]},)")
    if manifest.get("num_images") != images.shape[0] or manifest.get("image_shape") != list(images.shape[1:]):
        problems.append(
            f"manifest says {manifest.get('num_images')} images of {manifest.get('image_shape')}, "
            f"images.npy holds {images.shape[0]} of {list(images.shape[1:])}"
        )
    if labels.size and (labels.min() < 0 or labels.max() >= len(class_names)):
        problems.append(f"labels span [{labels.min()}, {labels.max()}] but there are {len(class_names)} classes")
    if verify and not problems:
        for name, array in (("images", images), ("labels", labels)):
            actual = array_sha256(array)
            if actual != manifest.get("sha256", {}).get(name):
                problems.append(
                    f"sha256 of {name}.npy is {actual}, manifest says {manifest.get('sha256', {}).get(name)}"
                )
    if problems:
        raise ValueError(f"store {root} is inconsistent: " + "; ".join(problems) + f"; {rebuild_hint('ingest')}")
    return Store(root=root, images=images, labels=labels, class_names=class_names, manifest=manifest)


def describe(store: Store) -> str:
    """One line summarising a store, for logs."""
    shape = "x".join(map(str, store.manifest["image_shape"]))
    counts = ", ".join(f"{n} {c}" for n, c in zip(store.class_names, store.class_counts))
    return f"{store.manifest['dataset']}: {store.num_images} images of {shape} ({counts})"


__all__ = [
    "STORE_FORMAT_VERSION",
    "RawDataset",
    "Store",
    "ingest",
    "open_store",
    "describe",
]

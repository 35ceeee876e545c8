"""Datasets and the canonical store (paper section 2.1; SPEC 1).

Every dataset, whatever its source, is ingested once into one canonical
*store*: a folder holding

- ``images.npy``: ``uint8`` ``(N, H, W, 3)``, memory-mappable;
- ``labels.npy``: ``int64`` ``(N,)``, class indices into ``class_names``;
- ``manifest.json``: ``dataset``, ``params`` (with defaults filled in),
  ``num_images``, ``image_shape`` ``[H, W, 3]``, ``class_names``,
  ``class_counts`` (aligned with ``class_names``), ``sha256`` of both arrays
  (over their C-order bytes), and ``source`` (where the pixels came from:
  archive path or URL, its md5, layout, skipped files).

Everything downstream (partitions, poisoning, training) reads the store, never
the original archive. The datasets (registry ``DATASETS``):

- ``cifar10``: the official ``cifar-10-python.tar.gz`` (downloaded or local),
  read from the tar without extracting; train and test pooled (SPEC 1).
- ``imagefolder``: a zip or folder laid out ``<root>/[split/]<class>/<image>``.
- ``flowers``: ``imagefolder`` with the Flowers defaults (224 x 224, the size
  the paper trains at).
- ``synthetic``: a small procedurally generated task, the offline default.
"""

from __future__ import annotations

import colorsys
import concurrent.futures
import hashlib
import io as _io
import logging
import math
import multiprocessing
import os
import pickle
import re
import tarfile
import threading
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageOps
from tqdm.auto import tqdm

from backdoor_eval.io import atomic_dir, atomic_path, read_json, write_json, write_npy
from backdoor_eval.registry import Registry

log = logging.getLogger(__name__)

DATASETS: Registry[type] = Registry("dataset")

STORE_FORMAT_VERSION = 1
DEFAULT_CACHE_DIR = "resources/downloads"

# Files that are decoded as images, and files that are clearly not images and
# are skipped (counted in the manifest). Anything else is an error, so that a
# stray file is never silently dropped nor silently turned into a sample.
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"})
NON_IMAGE_NAMES = frozenset(
    {
        ".ds_store",
        "thumbs.db",
        "desktop.ini",
        ".gitkeep",
        ".gitignore",
        ".gitattributes",
        "readme",
        "license",
        "licence",
    }
)
NON_IMAGE_SUFFIXES = frozenset(
    {
        ".txt",
        ".md",
        ".rst",
        ".csv",
        ".tsv",
        ".json",
        ".yaml",
        ".yml",
        ".xml",
        ".html",
        ".htm",
        ".py",
        ".pyc",
        ".ipynb",
        ".pdf",
        ".log",
        ".ini",
        ".db",
        ".sh",
    }
)
NON_IMAGE_DIRS = frozenset({"__MACOSX", ".ipynb_checkpoints", ".git"})


# --------------------------------------------------------------------------- #
# What a dataset returns, and the store
# --------------------------------------------------------------------------- #
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


def create_dataset(name: str, params: dict[str, Any] | None = None) -> Any:
    """Build the registered dataset ``name`` from ``params``, naming any unknown parameter."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; registered datasets: {', '.join(DATASETS.names())}")
    params = dict(params or {})
    cls = DATASETS.get(name)
    allowed = _init_params(cls)
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ValueError(
            f"unknown parameter(s) {', '.join(map(repr, unknown))} for dataset {name!r}; "
            f"allowed: {', '.join(allowed)}"
        )
    return cls(**params)


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


def open_store(path: str | os.PathLike, verify: bool = False) -> Store:
    """Open the store in ``path``; ``images`` is a read-only memmap.

    Checks that the three files exist and agree with each other; with
    ``verify=True`` also recomputes the sha256 of both arrays.
    """
    root = Path(path)
    missing = [n for n in ("images.npy", "labels.npy", "manifest.json") if not (root / n).is_file()]
    if missing:
        raise ValueError(
            f"{root} is not a dataset store: missing {', '.join(missing)} " "(create one with `backdoor-eval ingest`)"
        )
    manifest = read_json(root / "manifest.json")
    images = np.load(root / "images.npy", mmap_mode="r")
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
        raise ValueError(f"store {root} is inconsistent: " + "; ".join(problems))
    return Store(root=root, images=images, labels=labels, class_names=class_names, manifest=manifest)


def array_sha256(array: np.ndarray) -> str:
    """sha256 of an array's C-order bytes (dtype and shape are recorded beside it)."""
    digest = hashlib.sha256()
    flat = np.ascontiguousarray(array).reshape(-1).view(np.uint8)
    step = 1 << 26  # hash in 64 MiB slices so a memmap is never loaded whole
    for start in range(0, flat.size, step):
        digest.update(flat[start : start + step])
    return digest.hexdigest()


# --------------------------------------------------------------------------- #
# Downloads and checksums
# --------------------------------------------------------------------------- #
def file_md5(path: str | os.PathLike) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "md5").hexdigest()


def check_md5(path: str | os.PathLike, expected: str | None) -> str:
    """md5 of ``path``; raises ``ValueError`` naming both sums when ``expected`` differs."""
    actual = file_md5(path)
    if expected is not None and actual != expected.lower():
        raise ValueError(f"md5 mismatch for {path}: expected {expected.lower()}, got {actual}")
    return actual


def download(url: str, cache_dir: str | os.PathLike, md5: str | None = None, progress: bool = True) -> Path:
    """Fetch ``url`` into ``cache_dir`` (atomically; reused when already there) and check its md5."""
    name = PurePosixPath(urllib.parse.urlparse(url).path).name
    if not name:
        raise ValueError(f"cannot derive a file name from url {url!r}; expected a URL ending in the archive's name")
    target = Path(cache_dir) / name
    if target.is_file():
        check_md5(target, md5)
        return target
    log.info("downloading %s -> %s", url, target)
    digest = hashlib.md5()
    with atomic_path(target) as tmp, urllib.request.urlopen(url) as response, open(tmp, "wb") as out:
        total = int(response.headers.get("Content-Length") or 0) or None
        with tqdm(total=total, unit="B", unit_scale=True, desc=name, disable=not progress) as bar:
            while chunk := response.read(1 << 20):
                out.write(chunk)
                digest.update(chunk)
                bar.update(len(chunk))
        out.close()
        # Checked before the rename, so a bad download never lands in the cache.
        if md5 is not None and digest.hexdigest() != md5.lower():
            raise ValueError(f"md5 mismatch for {url}: expected {md5.lower()}, got {digest.hexdigest()}")
    return target


def _check_md5_param(md5: Any) -> str | None:
    if md5 is None:
        return None
    if not isinstance(md5, str) or not re.fullmatch(r"[0-9a-fA-F]{32}", md5):
        raise ValueError(f"md5 {md5!r} is not valid; expected 32 hex digits or null (no check)")
    return md5.lower()


# --------------------------------------------------------------------------- #
# cifar10: the official pickled batches, read from the tar.gz
# --------------------------------------------------------------------------- #
class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles the CIFAR batches while refusing every global but NumPy's array rebuilders.

    A downloaded pickle could otherwise run arbitrary code.
    """

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # how Python 3 writes bytes in protocol-2 pickles
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR-10 batch")
        if module == "numpy.core.multiarray":
            module = "numpy._core.multiarray"  # NumPy 2 name; avoids the deprecation shim
        return super().find_class(module, name)


@DATASETS.register("cifar10")
class Cifar10:
    """CIFAR-10 from the official ``cifar-10-python.tar.gz``, train and test pooled (SPEC 1).

    ``path``: a local copy of the archive; otherwise it is downloaded from
    ``url`` into ``cache_dir``. ``md5``: expected checksum (``None`` skips it).
    Images are in the official order: ``data_batch_1`` .. ``data_batch_5``
    (50,000) then ``test_batch`` (10,000).
    """

    URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
    MD5 = "c58f30108f718f92721af3b95e74349a"
    FOLDER = "cifar-10-batches-py"
    TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
    TEST_BATCHES = ("test_batch",)

    def __init__(
        self,
        path: str | None = None,
        url: str = URL,
        md5: str | None = MD5,
        cache_dir: str = DEFAULT_CACHE_DIR,
    ):
        if path is None and not url:
            raise ValueError("cifar10 needs `path` (a local cifar-10-python.tar.gz) or `url`")
        self.path, self.url, self.md5, self.cache_dir = path, url, _check_md5_param(md5), cache_dir
        self.params = {
            "path": None if path is None else str(path),
            "url": url,
            "md5": self.md5,
            "cache_dir": str(cache_dir),
        }

    def load(self, progress: bool = True) -> RawDataset:
        if self.path is not None:
            archive = Path(self.path)
            if not archive.is_file():
                raise ValueError(
                    f"cifar10 path {str(archive)!r} does not exist or is not a file; expected cifar-10-python.tar.gz"
                )
            archive_md5 = check_md5(archive, self.md5)
        else:
            archive = download(self.url, self.cache_dir, self.md5, progress)
            archive_md5 = file_md5(archive)
        batches: dict[str, dict[str, Any]] = {}
        try:
            tar = tarfile.open(archive, "r:*")
        except tarfile.TarError as exc:
            raise ValueError(f"{archive} is not a tar archive ({exc}); expected cifar-10-python.tar.gz") from None
        with tar:
            for batch in (*self.TRAIN_BATCHES, *self.TEST_BATCHES, "batches.meta"):
                member = f"{self.FOLDER}/{batch}"
                try:
                    fh = tar.extractfile(member)
                except KeyError:
                    fh = None
                if fh is None:
                    raise ValueError(f"{archive} has no file {member!r}; is it the CIFAR-10 python archive?")
                try:
                    with fh:
                        raw = _ArrayUnpickler(fh, encoding="bytes").load()
                    if not isinstance(raw, dict):
                        raise pickle.UnpicklingError(f"expected a dict, got {type(raw).__name__}")
                except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as exc:
                    raise ValueError(f"{member!r} in {archive} is not a CIFAR-10 python batch: {exc}") from None
                batches[batch] = {(k.decode() if isinstance(k, bytes) else k): v for k, v in raw.items()}
                required = ("label_names",) if batch == "batches.meta" else ("data", "labels")
                if missing := [k for k in required if k not in batches[batch]]:
                    raise ValueError(f"{member!r} in {archive} lacks {missing}; is it the CIFAR-10 python archive?")
        images, labels = [], []
        for batch in (*self.TRAIN_BATCHES, *self.TEST_BATCHES):
            data = np.asarray(batches[batch]["data"], dtype=np.uint8)
            # Rows are 1024 red, 1024 green, 1024 blue values of a 32 x 32 image.
            images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
            labels.append(np.asarray(batches[batch]["labels"], dtype=np.int64))
        class_names = [n.decode() if isinstance(n, bytes) else str(n) for n in batches["batches.meta"]["label_names"]]
        source = {
            "kind": "cifar10-python",
            "archive": str(archive),
            "url": None if self.path is not None else self.url,
            "md5": archive_md5,
            "pooled": [*self.TRAIN_BATCHES, *self.TEST_BATCHES],
            "split_counts": {
                "train": int(sum(len(batches[b]["labels"]) for b in self.TRAIN_BATCHES)),
                "test": int(sum(len(batches[b]["labels"]) for b in self.TEST_BATCHES)),
            },
        }
        return RawDataset(np.ascontiguousarray(np.concatenate(images)), np.concatenate(labels), class_names, source)


# --------------------------------------------------------------------------- #
# imagefolder / flowers: <root>/[split/]<class>/<image>, zip or folder
# --------------------------------------------------------------------------- #
@dataclass(frozen=True)
class _Layout:
    root: str  # the folder common to all images ("" = top level)
    has_splits: bool
    entries: list[str]  # archive entry names / relative paths, in class-then-name order
    labels: np.ndarray
    class_names: list[str]
    split_counts: dict[str, int]
    skipped: list[str]


def _entry_parts(name: str, archive: Path) -> tuple[str, ...]:
    """The path components of a zip entry; refuses entries that would escape the folder."""
    normalised = name.replace("\\", "/")
    if normalised.startswith("/") or re.match(r"^[A-Za-z]:", normalised) or ".." in normalised.split("/"):
        raise ValueError(
            f"zip entry {name!r} in {archive} escapes the archive folder (absolute path or '..'); refusing to read it"
        )
    return tuple(p for p in normalised.split("/") if p not in ("", "."))


def _is_clearly_not_image(parts: Sequence[str]) -> bool:
    name = parts[-1]
    lower = name.lower()
    return (
        any(p in NON_IMAGE_DIRS for p in parts[:-1])
        or lower in NON_IMAGE_NAMES
        or name.startswith("._")  # macOS resource forks, even when named *.jpg
        or PurePosixPath(lower).suffix in NON_IMAGE_SUFFIXES
    )


def _scan_layout(
    files: list[tuple[str, ...]],
    dirs: list[tuple[str, ...]],
    entry_names: dict[tuple[str, ...], str],
    where: str,
    splits: list[str] | None,
) -> _Layout:
    """Find the class (and optional split) folders from the file list; see ``ImageFolder``."""
    images, skipped = [], []
    for parts in files:
        if _is_clearly_not_image(parts):
            skipped.append(entry_names[parts])
        elif PurePosixPath(parts[-1].lower()).suffix in IMAGE_SUFFIXES:
            images.append(parts)
        else:
            raise ValueError(
                f"{entry_names[parts]!r} in {where} is not a recognised image file; "
                f"image files end in {', '.join(sorted(IMAGE_SUFFIXES))}"
            )
    if not images:
        raise ValueError(f"no images found in {where}; expected <root>/[split/]<class>/<image>")
    # The root is the deepest folder that holds every image.
    root: list[str] = []
    for level in zip(*(p[:-1] for p in images)):
        if len(set(level)) != 1:
            break
        root.append(level[0])
    depths = {len(p) - len(root) for p in images}
    if len(depths) > 1:
        by_depth = {len(p) - len(root): entry_names[p] for p in images}
        examples = "; ".join(f"{name!r} at depth {d}" for d, name in sorted(by_depth.items()))
        raise ValueError(f"mixed folder layout in {where}: {examples}; expected <root>/[split/]<class>/<image>")
    depth = depths.pop()
    root_name = "/".join(root) or "<top level>"
    if depth == 1:
        found = [root[-1]] if root else []
        raise ValueError(
            f"found {len(found)} class folder(s) {found} in {where}; at least 2 classes are needed "
            "(expected <root>/[split/]<class>/<image>)"
        )
    if depth > 3:
        raise ValueError(
            f"images in {where} sit {depth - 1} folders below {root_name!r}; "
            "expected <root>/<class>/<image> or <root>/<split>/<class>/<image>"
        )
    has_splits = depth == 3
    if splits is not None:
        if has_splits:
            available = sorted({p[len(root)] for p in images})
            unknown = [s for s in splits if s not in available]
            if unknown:
                raise ValueError(f"split(s) {unknown} not found in {where}; available splits: {', '.join(available)}")
            images = [p for p in images if p[len(root)] in splits]
        elif not root or root[-1] not in splits:
            raise ValueError(
                f"splits {splits} requested but {where} has no split folders (classes sit directly under {root_name!r})"
            )
    class_level = len(root) + (1 if has_splits else 0)
    # Class folders come from images and from directory entries, so an empty class is caught.
    class_folders = {p[: class_level + 1] for p in images}
    prefix = tuple(root)
    for d in dirs:
        if len(d) == class_level + 1 and d[: len(root)] == prefix and not any(x in NON_IMAGE_DIRS for x in d):
            if not has_splits or splits is None or d[len(root)] in splits:
                class_folders.add(d)
    class_names = sorted({f[-1] for f in class_folders})
    counts = {c: 0 for c in class_names}
    for p in images:
        counts[p[class_level]] += 1
    empty = [c for c, n in counts.items() if n == 0]
    if empty:
        raise ValueError(f"class folder(s) {empty} in {where} hold no images; every class needs at least one")
    if len(class_names) < 2:
        raise ValueError(f"found {len(class_names)} class {class_names} in {where}; at least 2 classes are needed")
    index = {c: i for i, c in enumerate(class_names)}
    # Sorted by class, then split, then file name: the store's order is independent of the archive's.
    images.sort(key=lambda p: (index[p[class_level]], p))
    split_counts: dict[str, int] = {}
    if has_splits:
        for p in images:
            split_counts[p[len(root)]] = split_counts.get(p[len(root)], 0) + 1
    return _Layout(
        root="/".join(root),
        has_splits=has_splits,
        entries=[entry_names[p] for p in images],
        labels=np.array([index[p[class_level]] for p in images], dtype=np.int64),
        class_names=class_names,
        split_counts=split_counts,
        skipped=sorted(skipped),
    )


_WORKER = threading.local()


def _init_decode_worker(source: str, is_zip: bool) -> None:
    """Give each decoding thread or process its own archive handle (zip handles are not shareable)."""
    _WORKER.source = Path(source)
    _WORKER.archive = zipfile.ZipFile(source) if is_zip else None


def _decode_entries(entries: list[str], size: int | None) -> np.ndarray:
    """Decode ``entries`` to one uint8 ``(k, H, W, 3)`` array (runs in a worker)."""
    arrays = []
    for entry in entries:
        try:
            data = _WORKER.archive.read(entry) if _WORKER.archive is not None else (_WORKER.source / entry).read_bytes()
            with Image.open(_io.BytesIO(data)) as img:
                rgb = img.convert("RGB")
            if size is not None and rgb.size != (size, size):
                # Shorter side to `size`, then centre crop (ImageOps.fit crops the
                # centred box in source pixels and resizes it in one antialiased step).
                rgb = ImageOps.fit(rgb, (size, size), method=Image.Resampling.BICUBIC)
            arrays.append(np.asarray(rgb, dtype=np.uint8))
        except Exception as exc:  # Pillow raises many types for a bad file; name the entry.
            raise ValueError(f"cannot decode image {entry!r} in {_WORKER.source}: {exc}") from exc
        if arrays[-1].shape != arrays[0].shape:
            raise ValueError(
                f"image {entry!r} in {_WORKER.source} is {arrays[-1].shape[1]}x{arrays[-1].shape[0]} but "
                f"{entries[0]!r} is {arrays[0].shape[1]}x{arrays[0].shape[0]}; with size=null all images must "
                "share one size (set `size` to resize them)"
            )
    return np.stack(arrays)


def decode_images(
    source: str | os.PathLike,
    entries: list[str],
    size: int | None,
    workers: int | None = None,
    executor: str = "thread",
    progress: bool = True,
    chunk_size: int | None = None,
) -> np.ndarray:
    """Decode image ``entries`` of a zip or folder in parallel into one uint8 ``(N, H, W, 3)`` array.

    ``executor`` is ``"thread"`` or ``"process"`` (see docs/data.md for which is
    faster); the output order is the order of ``entries`` whatever the pool.
    """
    if executor not in ("thread", "process"):
        raise ValueError(f"executor {executor!r} is not allowed; expected 'thread' or 'process'")
    if not entries:
        raise ValueError(f"no image entries to decode from {source}; expected at least one")
    source = Path(source)
    is_zip = source.is_file()
    workers = workers or _available_cpus()
    if chunk_size is None:
        # Several chunks per worker keep both busy to the end; big enough to amortise the hand-off.
        chunk_size = max(1, min(512, math.ceil(len(entries) / (workers * 8))))
    chunks = [entries[i : i + chunk_size] for i in range(0, len(entries), chunk_size)]
    init_args = (str(source), is_zip)
    if executor == "thread":
        pool: concurrent.futures.Executor = concurrent.futures.ThreadPoolExecutor(
            workers, initializer=_init_decode_worker, initargs=init_args
        )
    else:
        # forkserver: forking a process with live threads (tqdm's monitor, BLAS) can deadlock.
        context = multiprocessing.get_context("forkserver" if os.name == "posix" else "spawn")
        pool = concurrent.futures.ProcessPoolExecutor(
            workers, mp_context=context, initializer=_init_decode_worker, initargs=init_args
        )
    images: np.ndarray | None = None
    try:
        futures = [pool.submit(_decode_entries, chunk, size) for chunk in chunks]
        with tqdm(total=len(entries), unit="img", desc=f"decoding {source.name}", disable=not progress) as bar:
            start = 0
            for chunk, future in zip(chunks, futures):
                block = future.result()
                if images is None:
                    images = np.empty((len(entries), *block.shape[1:]), dtype=np.uint8)
                elif block.shape[1:] != images.shape[1:]:
                    raise ValueError(
                        f"image {chunk[0]!r} in {source} is {block.shape[2]}x{block.shape[1]} but "
                        f"{entries[0]!r} is {images.shape[2]}x{images.shape[1]}; with size=null all images must "
                        "share one size (set `size` to resize them)"
                    )
                images[start : start + len(block)] = block
                start += len(block)
                bar.update(len(block))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return images


@DATASETS.register("imagefolder")
class ImageFolder:
    """Images in a zip or folder laid out ``<root>/[split/]<class>/<image>``.

    The root is the deepest folder common to every image; below it the images
    sit either in ``<class>/`` folders or in ``<split>/<class>/`` folders (the
    layout is detected; every image must be at the same depth). Classes are
    the folder names sorted (Python string order); splits are pooled (all of
    them, or those named in ``splits``). ``size``: an int resizes the shorter
    side to ``size`` (bicubic, antialiased) and centre-crops to ``size x size``;
    ``None`` keeps the native size, which must then be one size for all.
    ``.DS_Store``, ``Thumbs.db``, ``__MACOSX/``, text and code files are
    skipped (listed in the manifest); any other non-image file is an error.
    ``path`` (zip file or folder) or ``url`` (a zip, downloaded into
    ``cache_dir``); ``md5`` checks the archive. Decoding runs in ``workers``
    threads or processes (``executor``).
    """

    DEFAULT_SIZE: int | None = None

    def __init__(
        self,
        path: str | None = None,
        url: str | None = None,
        md5: str | None = None,
        size: int | None = DEFAULT_SIZE,
        splits: list[str] | None = None,
        cache_dir: str = DEFAULT_CACHE_DIR,
        workers: int | None = None,
        executor: str = "thread",
    ):
        name = _registered_name(type(self))
        if path is None and not url:
            raise ValueError(f"{name} needs `path` (a zip file or folder) or `url` (a zip)")
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
            raise ValueError(f"size {size!r} is not allowed; expected a positive int or null (keep the native size)")
        if splits is not None and (
            isinstance(splits, str) or not splits or not all(isinstance(s, str) and s for s in splits)
        ):
            raise ValueError(
                f"splits {splits!r} is not allowed; expected a non-empty list of split folder names or null (all)"
            )
        if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
            raise ValueError(f"workers {workers!r} is not allowed; expected a positive int or null (one per CPU)")
        if executor not in ("thread", "process"):
            raise ValueError(f"executor {executor!r} is not allowed; expected 'thread' or 'process'")
        self.path, self.url, self.md5 = path, url, _check_md5_param(md5)
        self.size, self.splits, self.cache_dir = size, None if splits is None else list(splits), cache_dir
        self.workers, self.executor = workers, executor
        self.params = {
            "path": None if path is None else str(path),
            "url": url,
            "md5": self.md5,
            "size": size,
            "splits": self.splits,
            "cache_dir": str(cache_dir),
            "workers": workers,
            "executor": executor,
        }

    def load(self, progress: bool = True) -> RawDataset:
        if self.path is not None:
            source = Path(self.path)
            if not source.exists():
                raise ValueError(f"path {str(source)!r} does not exist; expected a zip file or a folder of images")
        else:
            source = download(self.url, self.cache_dir, self.md5, progress)
        source_info: dict[str, Any] = {"path": str(source), "url": self.url if self.path is None else None}
        if source.is_dir():
            if self.md5 is not None:
                raise ValueError(f"md5 {self.md5!r} given but {str(source)!r} is a folder; md5 checks a zip file only")
            layout = _scan_layout(*_list_folder(source), where=str(source), splits=self.splits)
            source_info["kind"] = "folder"
        else:
            source_info["md5"] = check_md5(source, self.md5)
            if not zipfile.is_zipfile(source):
                raise ValueError(f"{str(source)!r} is neither a folder nor a zip file")
            with zipfile.ZipFile(source) as archive:
                listing = _list_zip(archive, source)
            layout = _scan_layout(*listing, where=str(source), splits=self.splits)
            source_info["kind"] = "zip"
        images = decode_images(source, layout.entries, self.size, self.workers, self.executor, progress)
        source_info.update(
            root=layout.root,
            has_splits=layout.has_splits,
            split_counts=layout.split_counts,
            native_size=self.size is None,
            skipped=layout.skipped,
        )
        return RawDataset(images, layout.labels, layout.class_names, source_info)


@DATASETS.register("flowers")
class Flowers(ImageFolder):
    """Kaggle "Flowers Recognition" (https://www.kaggle.com/alxmamaev/flowers-recognition).

    The image-folder reader with the paper's 224 x 224 size. Kaggle downloads
    need a login, so pass ``path`` to the archive (or its unpacked folder)
    you fetched, or a ``url`` you can reach.
    """

    DEFAULT_SIZE = 224

    def __init__(
        self,
        path: str | None = None,
        url: str | None = None,
        md5: str | None = None,
        size: int | None = DEFAULT_SIZE,
        splits: list[str] | None = None,
        cache_dir: str = DEFAULT_CACHE_DIR,
        workers: int | None = None,
        executor: str = "thread",
    ):
        super().__init__(
            path=path,
            url=url,
            md5=md5,
            size=size,
            splits=splits,
            cache_dir=cache_dir,
            workers=workers,
            executor=executor,
        )


def _list_zip(archive: zipfile.ZipFile, where: Path):
    files, dirs, names = [], [], {}
    for info in archive.infolist():
        parts = _entry_parts(info.filename, where)
        if not parts:
            continue
        if info.is_dir():
            dirs.append(parts)
        else:
            files.append(parts)
            names[parts] = info.filename
    return files, dirs, names


def _list_folder(root: Path):
    files, dirs, names = [], [], {}
    for folder, subdirs, filenames in os.walk(root):
        rel = Path(folder).relative_to(root).parts
        subdirs[:] = sorted(d for d in subdirs if d not in NON_IMAGE_DIRS)
        dirs.extend(rel + (d,) for d in subdirs)
        for filename in filenames:
            parts = rel + (filename,)
            files.append(parts)
            names[parts] = "/".join(parts)
    return files, dirs, names


# --------------------------------------------------------------------------- #
# synthetic: a small deterministic task for offline runs and the quickstart
# --------------------------------------------------------------------------- #
@DATASETS.register("synthetic")
class Synthetic:
    """Coloured oriented gratings: a small image task that needs no download.

    Class ``k`` of ``K`` is a sinusoidal grating whose colour has hue ``k / K``
    and whose orientation is ``pi * (k * s mod K) / K`` (``s`` coprime to
    ``K``, so classes close in hue are far apart in orientation). Each image
    draws its own phase and frequency, jitters hue and orientation
    (``hue_jitter`` / ``angle_jitter``: standard deviations in units of the
    class spacing), and mixes the grating into a random grey, slightly tinted
    background at a contrast drawn from ``[min_contrast, 0.9]``, then scales
    brightness and adds Gaussian ``noise``. Low-contrast images show little
    of their class, so classes overlap and no model reaches 100%. Pixels are
    clipped to [0.08, 1], so no image holds a black pixel (a black-square
    trigger is never there by chance), and the grating fills the whole
    canvas, so the trigger's corner carries the same content as any other
    region.

    With the defaults, ``small_cnn`` (Adam, lr 1e-3, batch 64) trained on
    1,824 of the images reaches about 87-89% validation accuracy after 3-5
    epochs and levels off near 90% (measurements in docs/data.md).
    Byte-identical for the same parameters (on one NumPy version and
    platform); 3,000 32 x 32 images take well under a second.
    """

    def __init__(
        self,
        num_classes: int = 10,
        per_class: int = 300,
        size: int = 32,
        seed: int = 0,
        noise: float = 0.06,
        hue_jitter: float = 0.3,
        angle_jitter: float = 0.5,
        min_contrast: float = 0.0,
    ):
        for name, value, low in (
            ("num_classes", num_classes, 2),
            ("per_class", per_class, 1),
            ("size", size, 4),
            ("seed", seed, 0),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} {value!r} is not allowed; expected an int >= {low}")
        for name, value in (("noise", noise), ("hue_jitter", hue_jitter), ("angle_jitter", angle_jitter)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
                raise ValueError(f"{name} {value!r} is not allowed; expected a finite number >= 0")
        if isinstance(min_contrast, bool) or not isinstance(min_contrast, (int, float)) or not 0 <= min_contrast <= 0.9:
            raise ValueError(f"min_contrast {min_contrast!r} is not allowed; expected a number in [0, 0.9]")
        self.params = {
            "num_classes": num_classes,
            "per_class": per_class,
            "size": size,
            "seed": seed,
            "noise": float(noise),
            "hue_jitter": float(hue_jitter),
            "angle_jitter": float(angle_jitter),
            "min_contrast": float(min_contrast),
        }

    def load(self, progress: bool = True) -> RawDataset:
        images, labels = make_synthetic(**self.params)
        class_names = [f"class{k}" for k in range(self.params["num_classes"])]
        return RawDataset(images, labels, class_names, {"kind": "synthetic", "generator": "oriented-gratings-v1"})


def make_synthetic(
    num_classes: int = 10,
    per_class: int = 300,
    size: int = 32,
    seed: int = 0,
    noise: float = 0.06,
    hue_jitter: float = 0.3,
    angle_jitter: float = 0.5,
    min_contrast: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """The ``synthetic`` dataset's pixels (uint8 ``(N, size, size, 3)``) and labels, sorted by class."""
    rng = np.random.default_rng(seed)
    n = num_classes * per_class
    labels = np.repeat(np.arange(num_classes, dtype=np.int64), per_class)
    step = next(s for s in range(max(1, num_classes // 3), num_classes + 1) if math.gcd(s, num_classes) == 1)
    class_hue = np.arange(num_classes) / num_classes
    class_angle = np.pi * ((np.arange(num_classes) * step) % num_classes) / num_classes
    # Per-image draws, in a fixed order (the order is part of the dataset's definition).
    hue = np.mod(class_hue[labels] + rng.normal(0.0, hue_jitter / num_classes, n), 1.0)
    angle = class_angle[labels] + rng.normal(0.0, angle_jitter * np.pi / num_classes, n)
    cycles = rng.uniform(2.5, 3.5, n)  # grating periods per image width
    phase = rng.uniform(0.0, 2 * np.pi, n)
    saturation = rng.uniform(0.7, 0.95, n)
    value = rng.uniform(0.75, 0.95, n)
    background = rng.uniform(0.3, 0.7, (n, 1)) + rng.uniform(-0.1, 0.1, (n, 3))
    contrast = rng.uniform(min_contrast, 0.9, n)  # near 0 the class barely shows: the hard cases
    brightness = rng.uniform(0.85, 1.15, n)
    colour = np.array([colorsys.hsv_to_rgb(*hsv) for hsv in zip(hue, saturation, value)])

    coords = ((np.arange(size) + 0.5) / size).astype(np.float32)
    rows, cols = np.meshgrid(coords, coords, indexing="ij")

    def per_image(values: np.ndarray) -> np.ndarray:  # (n,) or (n, 3) -> broadcastable over (n, H, W, 3)
        return np.asarray(values, dtype=np.float32).reshape(n, 1, 1, -1)

    along = cols[None, ..., None] * per_image(np.cos(angle)) + rows[None, ..., None] * per_image(np.sin(angle))
    grating = 0.5 + 0.5 * np.sin(per_image(2 * np.pi * cycles) * along + per_image(phase))
    weight = per_image(contrast) * grating  # (n, H, W, 1): how much of the class colour shows
    images = per_image(background) * (1 - weight) + per_image(colour) * weight
    images *= per_image(brightness)
    images += np.float32(noise) * rng.standard_normal(images.shape, dtype=np.float32)
    np.clip(images, 0.08, 1.0, out=images)
    return np.rint(images * np.float32(255)).astype(np.uint8), labels


# --------------------------------------------------------------------------- #
# helpers
# --------------------------------------------------------------------------- #
def _available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _registered_name(cls: type) -> str:
    return next((n for n in DATASETS.names() if DATASETS.get(n) is cls), cls.__name__)


def _init_params(cls: type) -> list[str]:
    import inspect

    return [p for p in inspect.signature(cls.__init__).parameters if p != "self"]


def describe(store: Store) -> str:
    """One line summarising a store, for logs."""
    shape = "x".join(map(str, store.manifest["image_shape"]))
    counts = ", ".join(f"{n} {c}" for n, c in zip(store.class_names, store.class_counts))
    return f"{store.manifest['dataset']}: {store.num_images} images of {shape} ({counts})"


__all__ = [
    "DATASETS",
    "RawDataset",
    "Store",
    "ingest",
    "open_store",
    "create_dataset",
    "decode_images",
    "make_synthetic",
    "array_sha256",
    "check_md5",
    "file_md5",
    "download",
    "describe",
    "Cifar10",
    "ImageFolder",
    "Flowers",
    "Synthetic",
]

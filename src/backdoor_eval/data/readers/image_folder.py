"""``imagefolder``: images in a zip or folder laid out ``<root>/[split/]<class>/<image>``.

Lists the zip or folder, finds the class (and optional split) folders, and
decodes the images with ``backdoor_eval.data.decode``.
"""

from __future__ import annotations

import os
import re
import stat
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from ..decode import MAX_IMAGE_BYTES, MAX_IMAGE_PIXELS, PIXEL_CONVERSIONS, decode_images
from ..download import DEFAULT_CACHE_DIR, RemoteArchive, archive_path, check_md5, check_md5_param, download
from ..factory import DATASETS, registered_name
from ..store import RawDataset

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
# Archives inside the archive: named as such (they are not unpacked).
ARCHIVE_SUFFIXES = frozenset({".zip", ".tar", ".tgz", ".gz", ".bz2", ".xz", ".7z", ".rar"})


@dataclass(frozen=True)
class FolderLayout:
    """What ``scan_layout`` found: the images to decode, their labels, and what was skipped."""

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


def scan_layout(
    files: list[tuple[str, ...]],
    dirs: list[tuple[str, ...]],
    entry_names: dict[tuple[str, ...], str],
    where: str,
    splits: list[str] | None,
) -> FolderLayout:
    """Find the class (and optional split) folders from the file list; see ``ImageFolder``."""
    images, skipped = [], []
    for parts in files:
        if _is_clearly_not_image(parts):
            skipped.append(entry_names[parts])
        elif PurePosixPath(parts[-1].lower()).suffix in IMAGE_SUFFIXES:
            images.append(parts)
        elif PurePosixPath(parts[-1].lower()).suffix in ARCHIVE_SUFFIXES:
            raise ValueError(
                f"{entry_names[parts]!r} in {where} is an archive inside the dataset, which is not unpacked; "
                "allowed: image files (unpack it and put its class folders in the dataset)"
            )
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
        if (
            len(d) == class_level + 1
            and d[: len(root)] == prefix
            and not any(x in NON_IMAGE_DIRS for x in d)
            and (not has_splits or splits is None or d[len(root)] in splits)
        ):
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
    return FolderLayout(
        root="/".join(root),
        has_splits=has_splits,
        entries=[entry_names[p] for p in images],
        labels=np.array([index[p[class_level]] for p in images], dtype=np.int64),
        class_names=class_names,
        split_counts=split_counts,
        skipped=sorted(skipped),
    )


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
    threads or processes (``executor``). ``size`` left out is the class's
    ``DEFAULT_SIZE``: native here, 224 for ``flowers``, so a subclass changes
    the default without repeating the signature.
    """

    DEFAULT_SIZE: int | None = None

    def __init__(
        self,
        path: str | None = None,
        url: str | None = None,
        md5: str | None = None,
        size: int | None | str = "default",
        splits: list[str] | None = None,
        cache_dir: str = DEFAULT_CACHE_DIR,
        workers: int | None = None,
        executor: str = "thread",
        max_image_bytes: int = MAX_IMAGE_BYTES,
        max_image_pixels: int = MAX_IMAGE_PIXELS,
    ):
        name = registered_name(type(self))
        size = self.DEFAULT_SIZE if size == "default" else size
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
        for label, value in (("max_image_bytes", max_image_bytes), ("max_image_pixels", max_image_pixels)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{label} {value!r} is not allowed; expected a positive int")
        self.max_image_bytes, self.max_image_pixels = max_image_bytes, max_image_pixels
        self.path, self.url, self.md5 = path, url, check_md5_param(md5)
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
            "max_image_bytes": max_image_bytes,
            "max_image_pixels": max_image_pixels,
        }

    def remote_archive(self) -> RemoteArchive | None:
        """The zip :meth:`load` downloads (``None`` with a local ``path``), for the workflow's fetch rule."""
        if self.path is not None:
            return None
        return RemoteArchive(self.url, self.md5, archive_path(self.url, self.cache_dir))

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
            layout = scan_layout(*list_folder(source, self.max_image_bytes), where=str(source), splits=self.splits)
            source_info["kind"] = "folder"
        else:
            source_info["md5"] = check_md5(source, self.md5)
            if not zipfile.is_zipfile(source):
                raise ValueError(f"{str(source)!r} is neither a folder nor a zip file")
            with zipfile.ZipFile(source) as archive:
                listing = list_zip(archive, source, self.max_image_bytes)
            layout = scan_layout(*listing, where=str(source), splits=self.splits)
            source_info["kind"] = "zip"
        report: dict[str, Any] = {}
        images = decode_images(
            source,
            layout.entries,
            self.size,
            self.workers,
            self.executor,
            progress,
            max_bytes=self.max_image_bytes,
            max_pixels=self.max_image_pixels,
            report=report,
        )
        source_info.update(
            root=layout.root,
            has_splits=layout.has_splits,
            split_counts=layout.split_counts,
            native_size=self.size is None,
            skipped=layout.skipped,
            pixel_formats=report["pixel_formats"],
            # What was done to each format present (16-bit scaled, alpha dropped, ...): docs/data.md.
            pixel_conversions={kind: PIXEL_CONVERSIONS[kind] for kind in report["pixel_formats"]},
            exif_rotated=report["exif_rotated"],
        )
        return RawDataset(images, layout.labels, layout.class_names, source_info)


def list_zip(archive: zipfile.ZipFile, where: Path, max_bytes: int = MAX_IMAGE_BYTES):
    """The zip's files and folders as path tuples, and each file's entry name (input to ``scan_layout``).

    Refuses, by entry name, what cannot be read as one image file each: a symbolic link, an
    encrypted entry, one name given twice, and a file whose stated uncompressed size exceeds
    ``max_bytes`` (a zip bomb is refused here, before anything is inflated; the decoder also
    reads no more than ``max_bytes`` of an entry whose header understates it).
    """
    files, dirs, names = [], [], {}
    for info in archive.infolist():
        parts = _entry_parts(info.filename, where)
        if not parts:
            continue
        if info.is_dir():
            dirs.append(parts)
        elif stat.S_ISLNK(info.external_attr >> 16):  # Unix mode in the high 16 bits; the data is the link target
            target = archive.read(info).decode("utf-8", "replace")
            raise ValueError(
                f"entry {info.filename!r} in {str(where)!r} is a symbolic link (to {target!r}), which a zip cannot "
                "resolve; allowed: regular image files (zip the folder again without --symlinks / -y)"
            )
        elif info.flag_bits & 0x1:
            raise ValueError(
                f"entry {info.filename!r} in {str(where)!r} is encrypted; allowed: an unencrypted zip "
                "(zip the folder again without a password)"
            )
        elif parts in names:
            raise ValueError(
                f"entry {info.filename!r} in {str(where)!r} names the same file as entry {names[parts]!r}; "
                "allowed: each file once (a zip may hold two entries of one name: zip the folder again)"
            )
        elif not _is_clearly_not_image(parts) and info.file_size > max_bytes:
            raise ValueError(
                f"entry {info.filename!r} in {str(where)!r} is {info.file_size:,} bytes uncompressed, more than "
                f"max_image_bytes ({max_bytes:,}); raise that dataset parameter to read it"
            )
        else:
            files.append(parts)
            names[parts] = info.filename
    return files, dirs, names


def list_folder(root: Path, max_bytes: int = MAX_IMAGE_BYTES):
    """The folder's files and subfolders as path tuples, and each file's relative path (input to ``scan_layout``).

    Symbolic links to folders (a class folder linked from elsewhere) are followed, each real folder once.
    """
    files, dirs, names = [], [], {}
    seen = {os.path.realpath(root)}
    for folder, subdirs, filenames in os.walk(root, followlinks=True):
        rel = Path(folder).relative_to(root).parts
        kept = []
        for d in sorted(subdirs):
            real = os.path.realpath(os.path.join(folder, d))
            if d in NON_IMAGE_DIRS or real in seen:  # a link back up the tree would loop
                continue
            seen.add(real)
            kept.append(d)
        subdirs[:] = kept
        dirs.extend(rel + (d,) for d in subdirs)
        for filename in filenames:
            parts = rel + (filename,)
            path = os.path.join(folder, filename)
            if not _is_clearly_not_image(parts) and os.path.isfile(path) and os.path.getsize(path) > max_bytes:
                raise ValueError(
                    f"{'/'.join(parts)!r} in {str(root)!r} is {os.path.getsize(path):,} bytes, more than "
                    f"max_image_bytes ({max_bytes:,}); raise that dataset parameter to read it"
                )
            files.append(parts)
            names[parts] = "/".join(parts)
    return files, dirs, names


__all__ = ["ImageFolder", "FolderLayout", "scan_layout", "list_zip", "list_folder"]

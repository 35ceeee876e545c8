"""Parallel decoding of image files from a zip or a folder into one uint8 array.

Each worker thread or process opens its own handle on the source; chunks
come back in order, so the output order is the order of the entries.
"""

from __future__ import annotations

import concurrent.futures
import io as _io
import math
import multiprocessing
import os
import threading
import warnings
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps
from tqdm.auto import tqdm

_WORKER = threading.local()

# Bounds on one image file, checked before it is read or decoded (the ``imagefolder`` parameters
# ``max_image_bytes`` and ``max_image_pixels``): a crafted archive (a small zip whose entry inflates
# to gigabytes, a PNG header claiming 12,000 x 12,000) is refused by name instead of filling memory.
# 256 MB holds a 40-megapixel 16-bit RGB TIFF; 64 megapixels is 8192 x 8192 (a 192 MB RGB array).
MAX_IMAGE_BYTES = 256 * 2**20
MAX_IMAGE_PIXELS = 2**26

# How each source pixel format becomes 8-bit RGB; the counts of each are in the store manifest
# (``source.pixel_formats``). A format not listed here is refused by name.
PIXEL_CONVERSIONS = {
    "RGB": "kept",
    "RGB 16-bit": "high byte kept (v >> 8, Pillow's reading)",
    "L": "grey, copied to 3 channels",
    "1": "black and white, copied to 3 channels",
    "P": "palette colours",
    "P with transparency": "palette colours, transparency dropped",
    "RGBA": "alpha dropped (the colours as stored)",
    "RGBA 16-bit": "high byte kept (v >> 8, Pillow's reading), alpha dropped",
    "LA": "alpha dropped, grey copied to 3 channels",
    "PA": "alpha dropped, palette colours",
    "I;16": "16-bit grey: high byte kept (v >> 8), copied to 3 channels",
    "I": "32-bit integer grey: values 0..65535 read as 16-bit (v >> 8); any other value refused",
    "F": "floating-point grey: values in [0, 1] scaled by 255 and rounded; any other value refused",
    "CMYK": "Pillow's CMYK to RGB conversion (no colour profile)",
    "YCbCr": "Pillow's conversion to RGB",
    "LAB": "Pillow's conversion to RGB",
    "HSV": "Pillow's conversion to RGB",
}
_SIXTEEN_BIT_GREY = ("I;16", "I;16L", "I;16B", "I;16N")


def _init_decode_worker(source: str, is_zip: bool) -> None:
    """Give each decoding thread or process its own archive handle (zip handles are not shareable)."""
    _WORKER.source = Path(source)
    _WORKER.archive = zipfile.ZipFile(source) if is_zip else None
    # Pillow's own warning threshold (89 megapixels) is replaced by the max_pixels check of each image.
    warnings.simplefilter("ignore", Image.DecompressionBombWarning)


def _read_entry(entry: str, max_bytes: int) -> bytes:
    """The bytes of ``entry``, reading at most ``max_bytes`` (+1 to tell a file that is larger)."""
    if _WORKER.archive is not None:
        with _WORKER.archive.open(entry) as handle:
            data = handle.read(max_bytes + 1)
    else:
        with open(_WORKER.source / entry, "rb") as handle:
            data = handle.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise _Refused(f"is larger than max_image_bytes ({max_bytes:,} bytes); raise that dataset parameter to read it")
    return data


class _Refused(ValueError):
    """An image refused by a stated rule (its message completes "cannot decode image <entry> in <source>: it ...")."""


def pixel_format(img: Image.Image) -> str:
    """The key of :data:`PIXEL_CONVERSIONS` for an opened (not yet decoded) image."""
    # The raw mode of the first tile ("RGB;16B" for a 16-bit PNG): a str, or a tuple that starts with it.
    args = img.tile[0].args if img.tile else ""
    rawmode = args if isinstance(args, str) else next((a for a in args or () if isinstance(a, str)), "")
    if img.mode in _SIXTEEN_BIT_GREY:
        return "I;16"
    if img.mode in ("RGB", "RGBA") and ";16" in rawmode:
        return f"{img.mode} 16-bit"
    if img.mode == "P" and "transparency" in img.info:
        return "P with transparency"
    return img.mode


def to_rgb8(img: Image.Image, kind: str) -> Image.Image:
    """``img`` (of :func:`pixel_format` ``kind``) as an 8-bit RGB image, as :data:`PIXEL_CONVERSIONS` says."""
    if kind not in PIXEL_CONVERSIONS:
        raise _Refused(f"has pixel format {kind!r}, which is not read; allowed: {', '.join(PIXEL_CONVERSIONS)}")
    if kind in ("I;16", "I"):
        grey = np.asarray(img).astype(np.int64)
        if grey.size and (grey.min() < 0 or grey.max() > 65535):
            raise _Refused(
                f"holds 32-bit integer pixels in [{grey.min()}, {grey.max()}]; allowed: 8-bit images, or 16-bit "
                "ones (values 0..65535)"
            )
        return Image.fromarray((grey >> 8).astype(np.uint8), "L").convert("RGB")
    if kind == "F":
        grey = np.asarray(img, dtype=np.float64)
        if grey.size and not (np.isfinite(grey).all() and grey.min() >= 0 and grey.max() <= 1):
            raise _Refused(
                f"holds floating-point pixels in [{np.nanmin(grey)}, {np.nanmax(grey)}]; allowed: floating-point "
                "images with values in [0, 1]"
            )
        return Image.fromarray(np.rint(grey * 255).astype(np.uint8), "L").convert("RGB")
    if kind == "P with transparency":
        return img.convert("RGBA").convert("RGB")
    return img.convert("RGB")


def _decode_one(entry: str, size: int | None, max_bytes: int, max_pixels: int, report: Counter) -> np.ndarray:
    data = _read_entry(entry, max_bytes)
    if not data:
        raise _Refused("is empty (0 bytes)")
    try:
        img = Image.open(_io.BytesIO(data))
    except Image.UnidentifiedImageError:
        raise _Refused(f"is not an image file Pillow can read (it begins {data[:16]!r})") from None
    except Image.DecompressionBombError as exc:
        raise _Refused(f"is too large to decode ({exc}); allowed: at most max_image_pixels ({max_pixels:,})") from None
    with img:
        width, height = img.size
        if width * height > max_pixels:
            raise _Refused(
                f"is {width}x{height} = {width * height:,} pixels, more than max_image_pixels ({max_pixels:,}); "
                "raise that dataset parameter to read it"
            )
        kind = pixel_format(img)
        report[f"format:{kind}"] += 1
        # Stored as a viewer shows it: the EXIF orientation (a phone's rotated photo) applied.
        if img.getexif().get(_EXIF_ORIENTATION, 1) not in (1, None):
            report["exif_rotated"] += 1
            img = ImageOps.exif_transpose(img)
        rgb = to_rgb8(img, kind)
    if size is not None and rgb.size != (size, size):
        # Shorter side to `size`, then centre crop (ImageOps.fit crops the
        # centred box in source pixels and resizes it in one antialiased step).
        rgb = ImageOps.fit(rgb, (size, size), method=Image.Resampling.BICUBIC)
    return np.asarray(rgb, dtype=np.uint8)


_EXIF_ORIENTATION = 0x0112


def _decode_entries(
    entries: list[str], size: int | None, max_bytes: int = MAX_IMAGE_BYTES, max_pixels: int = MAX_IMAGE_PIXELS
) -> tuple[np.ndarray, Counter]:
    """Decode ``entries`` to one uint8 ``(k, H, W, 3)`` array (runs in a worker), with the counts of
    their pixel formats and EXIF rotations."""
    arrays = []
    report: Counter = Counter()
    for entry in entries:
        try:
            arrays.append(_decode_one(entry, size, max_bytes, max_pixels, report))
        except _Refused as exc:
            raise ValueError(f"cannot decode image {entry!r} in {_WORKER.source}: it {exc}") from None
        except Exception as exc:  # Pillow raises many types for a bad file; name the entry.
            raise ValueError(f"cannot decode image {entry!r} in {_WORKER.source}: {exc}") from exc
        if arrays[-1].shape != arrays[0].shape:
            raise ValueError(
                f"image {entry!r} in {_WORKER.source} is {arrays[-1].shape[1]}x{arrays[-1].shape[0]} but "
                f"{entries[0]!r} is {arrays[0].shape[1]}x{arrays[0].shape[0]}; with size=null all images must "
                "share one size (set `size` to resize them)"
            )
    return np.stack(arrays), report


def decode_images(
    source: str | os.PathLike,
    entries: list[str],
    size: int | None,
    workers: int | None = None,
    executor: str = "thread",
    progress: bool = True,
    chunk_size: int | None = None,
    max_bytes: int = MAX_IMAGE_BYTES,
    max_pixels: int = MAX_IMAGE_PIXELS,
    report: dict | None = None,
) -> np.ndarray:
    """Decode image ``entries`` of a zip or folder in parallel into one uint8 ``(N, H, W, 3)`` array.

    ``executor`` is ``"thread"`` or ``"process"`` (see docs/data.md for which is
    faster); the output order is the order of ``entries`` whatever the pool.
    An image file over ``max_bytes`` or ``max_pixels`` is refused before it is decoded. ``report``,
    when given, receives ``pixel_formats`` (count per :data:`PIXEL_CONVERSIONS` key) and
    ``exif_rotated`` (images turned upright by their EXIF orientation).
    """
    if executor not in ("thread", "process"):
        raise ValueError(f"executor {executor!r} is not allowed; expected 'thread' or 'process'")
    if not entries:
        raise ValueError(f"no image entries to decode from {source}; expected at least one")
    source = Path(source)
    is_zip = source.is_file()
    workers = workers or available_cpus()
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
        futures = [pool.submit(_decode_entries, chunk, size, max_bytes, max_pixels) for chunk in chunks]
        counts: Counter = Counter()
        with tqdm(total=len(entries), unit="img", desc=f"decoding {source.name}", disable=not progress) as bar:
            start = 0
            for chunk, future in zip(chunks, futures):
                block, chunk_counts = future.result()
                counts.update(chunk_counts)
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
    if report is not None:
        report["pixel_formats"] = {
            key.removeprefix("format:"): counts[key] for key in sorted(counts) if key.startswith("format:")
        }
        report["exif_rotated"] = counts["exif_rotated"]
    return images


def available_cpus() -> int:
    """CPUs this process may run on (the default number of decoding workers)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


__all__ = ["MAX_IMAGE_BYTES", "MAX_IMAGE_PIXELS", "PIXEL_CONVERSIONS", "decode_images", "available_cpus", "to_rgb8"]

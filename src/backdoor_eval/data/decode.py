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
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps
from tqdm.auto import tqdm

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


def available_cpus() -> int:
    """CPUs this process may run on (the default number of decoding workers)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


__all__ = ["decode_images", "available_cpus"]

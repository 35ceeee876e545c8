"""Downloads into a local cache, and md5 checks of archives.

A reader that downloads names its archive with :class:`RemoteArchive` (``remote_archive()``), so that
the workflow's ``fetch_dataset`` rule fetches it on the submitting node; every other job runs with
downloads off (``backdoor_eval.offline``), and :func:`download` then only finds the file or fails
at once, naming it.
"""

from __future__ import annotations

import logging
import os
import re
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from tqdm.auto import tqdm

from backdoor_eval.hashing import file_digest
from backdoor_eval.io import atomic_path
from backdoor_eval.network import DOWNLOADS_OFF, downloads_off

log = logging.getLogger(__name__)

DEFAULT_CACHE_DIR = "resources/downloads"


def check_md5(path: str | os.PathLike, expected: str | None) -> str:
    """md5 of ``path``; raises ``ValueError`` naming both sums when ``expected`` differs."""
    actual = file_digest(path, "md5")
    if expected is not None and actual != expected.lower():
        raise ValueError(f"md5 mismatch for {path}: expected {expected.lower()}, got {actual}")
    return actual


@dataclass(frozen=True)
class RemoteArchive:
    """An archive a reader downloads: from ``url`` into ``path`` (``<cache_dir>/<file name>``), checked by ``md5``."""

    url: str
    md5: str | None
    path: Path


def archive_path(url: str, cache_dir: str | os.PathLike) -> Path:
    """Where :func:`download` keeps ``url``: ``<cache_dir>/<the URL's file name>``."""
    name = PurePosixPath(urllib.parse.urlparse(url).path).name
    if not name:
        raise ValueError(f"cannot derive a file name from url {url!r}; expected a URL ending in the archive's name")
    return Path(cache_dir) / name


def download(url: str, cache_dir: str | os.PathLike, md5: str | None = None, progress: bool = True) -> Path:
    """Fetch ``url`` into ``cache_dir`` (atomically; reused when already there) and check its md5.

    With downloads off (``BACKDOOR_EVAL_OFFLINE=1``, every workflow job but the fetch rules) a file
    that is not there is a ``FileNotFoundError`` at once, naming it.
    """
    target = archive_path(url, cache_dir)
    if target.is_file():
        check_md5(target, md5)
        return target
    if downloads_off():
        raise FileNotFoundError(
            f"dataset archive {target} does not exist, and downloads are off here ({DOWNLOADS_OFF}=1: "
            f"every workflow job but fetch_dataset runs offline). The fetch_dataset rule downloads it from "
            f"{url} on the submitting node; on a machine with no internet, copy the archive to {target}"
        )
    log.info("downloading %s -> %s", url, target)
    with atomic_path(target) as tmp, urllib.request.urlopen(url) as response, open(tmp, "wb") as out:
        total = int(response.headers.get("Content-Length") or 0) or None
        with tqdm(total=total, unit="B", unit_scale=True, desc=target.name, disable=not progress) as bar:
            while chunk := response.read(1 << 20):
                out.write(chunk)
                bar.update(len(chunk))
        out.close()
        # Checked before the rename, so a bad download never lands in the cache.
        actual = file_digest(tmp, "md5")
        if md5 is not None and actual != md5.lower():
            raise ValueError(f"md5 mismatch for {url}: expected {md5.lower()}, got {actual}")
    return target


def check_md5_param(md5: Any) -> str | None:
    if md5 is None:
        return None
    if not isinstance(md5, str) or not re.fullmatch(r"[0-9a-fA-F]{32}", md5):
        raise ValueError(f"md5 {md5!r} is not valid; expected 32 hex digits or null (no check)")
    return md5.lower()


__all__ = ["DEFAULT_CACHE_DIR", "RemoteArchive", "archive_path", "check_md5", "check_md5_param", "download"]

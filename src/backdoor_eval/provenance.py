"""Which code made a result: the package version and, in a git checkout, the commit.

Recorded in every phase's ``final.json`` and carried into ``runs.parquet``
(``package_version``, ``git_commit``), so rows made by different code can be
told apart (README.md: "Results and code changes").
"""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path

from backdoor_eval import __version__

PACKAGE_DIR = Path(__file__).resolve().parent


@functools.cache
def git_commit() -> str | None:
    """The commit of the checkout the package is imported from, ``+dirty`` when tracked files are edited;
    ``None`` outside a git checkout (an installed wheel) or without git."""
    try:
        head = subprocess.run(
            ["git", "-C", str(PACKAGE_DIR), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        )
        if head.returncode != 0:
            return None
        status = subprocess.run(
            ["git", "-C", str(PACKAGE_DIR), "status", "--porcelain", "--untracked-files=no", "--", "."],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("+dirty" if status.returncode == 0 and status.stdout.strip() else "")


def provenance() -> dict[str, str | None]:
    """``package_version`` and ``git_commit`` of the running code."""
    return {"package_version": __version__, "git_commit": git_commit()}


__all__ = ["git_commit", "provenance"]

"""Shared fixtures: where the real datasets are, and skipping when they are not."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATASETS = Path(os.environ.get("BACKDOOR_EVAL_SHARED_DATASETS", REPO.parent / "shared" / "datasets"))


def shared_dataset(name: str) -> Path:
    """Path of a real dataset zip in ../shared/datasets, or skip the test saying why."""
    path = SHARED_DATASETS / name
    if not path.is_file():
        pytest.skip(
            f"real dataset {name} not found at {path} (set BACKDOOR_EVAL_SHARED_DATASETS "
            "to the folder holding cifar10-jpeg.zip and flowers-recognition-256.zip)"
        )
    return path


@pytest.fixture
def cifar10_zip() -> Path:
    return shared_dataset("cifar10-jpeg.zip")


@pytest.fixture
def flowers_zip() -> Path:
    return shared_dataset("flowers-recognition-256.zip")

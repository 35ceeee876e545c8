"""Shared fixtures: where the real datasets are (skipping when they are not), a small LV fit; Hypothesis profiles."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import settings

from backdoor_eval.lv_fit import fit_low_variance

REPO = Path(__file__).resolve().parents[1]
SHARED_DATASETS = Path(os.environ.get("BACKDOOR_EVAL_SHARED_DATASETS", REPO.parent / "shared" / "datasets"))

# Property-based tests (tests/test_properties_*.py). No deadline: the tests share the machine with
# other work, and a slow example is not a failure. `ci` (active when the CI variable is set) is
# Hypothesis's own: derandomized, no example database. `pytest --hypothesis-profile=thorough` hunts longer.
settings.register_profile("default", settings.get_profile("default"), max_examples=100, deadline=None)
settings.register_profile("ci", settings.get_profile("ci"), max_examples=100, deadline=None)
settings.register_profile("thorough", settings.get_profile("default"), max_examples=2000)


def shared_dataset(name: str) -> Path:
    """Path of a real dataset zip in the datasets folder (see SHARED_DATASETS), or skip the test saying why."""
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


def make_low_rank_images(n=40, height=6, width=5, seed=0):
    """uint8 images near mid-grey: a few strong directions plus small noise, far from 0 and 255."""
    rng = np.random.default_rng(seed)
    dims = height * width * 3
    basis = rng.standard_normal((4, dims))
    data = 128 + (rng.standard_normal((n, 4)) * [20, 10, 5, 2]) @ basis / np.sqrt(dims) * 4
    data += rng.standard_normal((n, dims)) * 1.5
    return np.clip(np.rint(data), 0, 255).astype(np.uint8).reshape(n, height, width, 3)


@pytest.fixture
def low_rank_images():
    """:func:`make_low_rank_images`, for tests that fit the LV trigger on small images."""
    return make_low_rank_images


@pytest.fixture(scope="module")
def lv_fit():
    """An LV fit of 40 small low-rank images, with a 41st as the reference."""
    images = make_low_rank_images(n=41)
    return fit_low_variance(images[:40], images[40])


@pytest.fixture
def fitted_toy(monkeypatch):
    """The toy fitted trigger of tests/fitted_trigger.py, registered in TRIGGERS for one test."""
    import fitted_trigger
    from backdoor_eval.triggers import TRIGGERS

    monkeypatch.setitem(TRIGGERS._entries, fitted_trigger.NAME, fitted_trigger.MeanImage)
    return fitted_trigger

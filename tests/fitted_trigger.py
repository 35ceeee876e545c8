"""A toy fitted trigger, declared as README.md's "Add a fitted trigger" says: one class and its fit.

Not a test module; the test files import it (pytest puts tests/ on sys.path). Nothing is registered
on import: ``register()`` adds it to ``TRIGGERS`` (a test's fixture does it with monkeypatch, the
dry-run test in the Snakemake process it starts), so the other tests see the registry as shipped.
"""

from __future__ import annotations

import argparse

import numpy as np

from backdoor_eval.io import atomic_path
from backdoor_eval.triggers import TRIGGERS, Trigger

NAME = "toyfit"


class MeanImageFit:
    """The toy's fit: the mean poison-train image of the split, darkened by ``shade``."""

    help = "fit the toy trigger: the split's mean poison-train image"

    @staticmethod
    def options(shade: float | None = None) -> list[str]:
        if shade is None:
            return []
        if isinstance(shade, bool) or not isinstance(shade, (int, float)) or not 0.0 <= shade <= 1.0:
            raise ValueError(f"shade={shade!r}; allowed: a number in [0, 1]")
        return ["--shade", str(float(shade))]

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--shade", type=float, default=1.0, help="multiplies the mean image")

    def fit(self, images, partitions, *, split, seed, split_keys, args, out) -> None:
        mean = np.asarray(images[np.asarray(partitions["poison_train"])], dtype=np.float64).mean(axis=0) / 255.0
        with atomic_path(out) as tmp, open(tmp, "wb") as handle:
            np.savez(handle, pattern=(mean * args.shade).astype(np.float32), split=np.str_(split))


class MeanImage(Trigger):
    """The toy: the fitted mean image over the whole picture (m = 0)."""

    name = NAME
    title = "Mean image"
    default_alpha = 0.2
    fitter = MeanImageFit()

    def __init__(self, alpha: float | None = None, fit: str | None = None):
        super().__init__(alpha)
        if fit is None:
            raise ValueError(f"the {NAME} trigger needs fit=<its fit file>; got None")
        self.fit = str(fit)
        with np.load(self.fit) as npz:
            self.pattern = npz["pattern"]

    def params(self) -> dict:
        return {"fit": self.fit}

    def pattern_and_mask(self, n, height, width, rng=None):
        return self.pattern[None], np.zeros((1, 1, 1, 1), dtype=np.float32)


def register() -> None:
    """Add the toy to ``TRIGGERS`` for the rest of this process."""
    TRIGGERS.register(NAME)(MeanImage)

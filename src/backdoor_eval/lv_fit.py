"""The low-variance (LV) trigger's fit: PCA of poison-train and the fit file.

The LV trigger (Tanay et al.) is the projection of a reference image onto
the trailing (lowest-variance) principal components of the training images
(docs/decisions.md#low-variance-trigger). :func:`fit_low_variance` computes
it, :func:`save_lv_fit` / :func:`load_lv_fit` write and read the fit as an
npz, and :func:`backdoor_eval.hashing.file_digest` identifies a fit file. The trigger that embeds
the fitted pattern with eq. 7 is ``backdoor_eval.triggers.LowVariance``, whose ``fitter``
(:data:`LOW_VARIANCE_FIT`) is how the workflow makes one fit per dataset and split
(``backdoor-eval fit-lv``, its parameters under the config's ``triggers.lv.params``).
"""

from __future__ import annotations

import argparse
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from backdoor_eval.io import atomic_path, reading, rebuild_hint

log = logging.getLogger(__name__)


@dataclass
class LowVarianceFit:
    """A fitted low-variance trigger (docs/decisions.md#low-variance-trigger).

    ``pattern``: (H, W, 3) float32, the literal reading (projection onto the
    chosen components plus the mean, clipped). ``pattern_scaled``: the
    projection alone, min-max scaled to [0, 1]. ``components``: (k, D)
    float32 chosen rows of V^T, highest variance first. ``mean``: (D,)
    float32. ``explained_variance_ratio``: (k,) of the chosen components;
    ``component_indices``: their positions in the full variance order;
    ``total_components``: rank kept (the numerical null space of the centred
    data is dropped, its directions being arbitrary).
    """

    pattern: np.ndarray
    pattern_scaled: np.ndarray
    components: np.ndarray | None  # None when loaded with with_components=False
    mean: np.ndarray
    explained_variance_ratio: np.ndarray
    component_indices: np.ndarray
    total_components: int
    variance_fraction: float
    reference: np.ndarray  # (H, W, 3) uint8, the projected image
    projection: np.ndarray  # (H, W, 3) float32, unclipped low-variance projection (mean not added)
    source_path: str | None = None  # where it was loaded from / saved to (for spec())

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.pattern.shape)  # type: ignore[return-value]


LV_BACKENDS = ("gram", "numpy", "torch")
# Columns (or rows) converted to float64 at a time by the gram backend: 2,600 x 4,096 x 8 B = 85 MB.
_PCA_CHUNK = 4096


class _PCA:
    """Thin PCA of uint8 images: mean, singular values (descending) and rows of V^T on demand.

    ``gram`` (default): eigendecomposition, in float64, of the smaller of the
    N x N Gram matrix Xc Xc^T (N <= D, e.g. Flowers: 2,600 x 150,528) or the
    D x D scatter matrix Xc^T Xc (N > D, e.g. CIFAR-10: 36,000 x 3,072),
    accumulated over column/row chunks, so the float centred matrix is never
    held whole; components are V = Xc^T U / s. This is the SVD of the centred
    data matrix, computed through its smaller side. ``numpy``/``torch``: a
    thin SVD (LAPACK gesdd) of the whole centred float32 matrix, kept for
    comparison: on Flowers it took 12 minutes and 15 GB where gram needs
    about a minute and 1 GB (docs/attack.md).
    """

    def __init__(self, flat: np.ndarray, backend: str):
        if backend not in LV_BACKENDS:
            raise ValueError(f"LV backend {backend!r} is unknown; allowed: {', '.join(LV_BACKENDS)}")
        self.flat, self.backend = flat, backend
        n, d = flat.shape
        self.mean = flat.mean(axis=0, dtype=np.float64) / 255.0
        if backend == "gram":
            self._fit_gram()
            noise_eps = math.sqrt(max(n, d) * np.finfo(np.float64).eps)  # eigh of a float64 Gram: error ~ eps s_max^2
        else:
            self._fit_svd()
            noise_eps = math.sqrt(max(n, d)) * np.finfo(np.float32).eps  # float32 SVD: error ~ eps s_max
        # Centring leaves rank <= N - 1 (duplicates remove more): directions with a
        # singular value at noise level are arbitrary, so they are not components.
        self.rank = int(np.count_nonzero(self.singular_values > self.singular_values[0] * noise_eps))

    def _centred(self, rows=slice(None), cols=slice(None)) -> np.ndarray:
        return self.flat[rows, cols].astype(np.float64) / 255.0 - self.mean[cols]

    def _chunks(self, size: int):
        return (slice(start, start + _PCA_CHUNK) for start in range(0, size, _PCA_CHUNK))

    def _fit_gram(self) -> None:
        n, d = self.flat.shape
        self.small_side_is_samples = n <= d
        side = min(n, d)
        scatter = np.zeros((side, side), dtype=np.float64)
        if self.small_side_is_samples:
            for cols in self._chunks(d):
                block = self._centred(cols=cols)
                scatter += block @ block.T  # NumPy calls syrk for a @ a.T
        else:
            for rows in self._chunks(n):
                block = self._centred(rows=rows)
                scatter += block.T @ block
        eigenvalues, eigenvectors = np.linalg.eigh(scatter)
        order = np.argsort(eigenvalues)[::-1]
        self.singular_values = np.sqrt(np.clip(eigenvalues[order], 0.0, None))
        self._eigenvectors = eigenvectors[:, order]

    def _fit_svd(self) -> None:
        centred = self.flat.astype(np.float32)
        centred /= np.float32(255.0)
        centred -= self.mean.astype(np.float32)
        if self.backend == "numpy":
            _, singular_values, vt = np.linalg.svd(centred, full_matrices=False)
        else:
            import torch

            _, singular_values, vt = (
                t.numpy() for t in torch.linalg.svd(torch.from_numpy(centred), full_matrices=False)
            )
        self.singular_values, self._vt = singular_values.astype(np.float64), vt

    def components(self, indices: np.ndarray) -> np.ndarray:
        """Rows of V^T (unit principal axes, float64) for the given component indices."""
        if self.backend != "gram":
            return self._vt[indices].astype(np.float64)
        if not self.small_side_is_samples:
            return self._eigenvectors[:, indices].T.copy()
        left = self._eigenvectors[:, indices] / self.singular_values[indices]
        out = np.empty((len(indices), self.flat.shape[1]), dtype=np.float64)
        for cols in self._chunks(self.flat.shape[1]):
            out[:, cols] = left.T @ self._centred(cols=cols)
        return out


def fit_low_variance(
    train_images_uint8: np.ndarray,
    reference_uint8: np.ndarray,
    variance_fraction: float = 0.005,
    backend: str = "gram",
) -> LowVarianceFit:
    """Fit the LV trigger: PCA of the training images, reference projected on the trailing components.

    PCA of the centred data matrix through its smaller side (see ``_PCA``;
    never the D x D covariance when D is the large side). Components are
    ordered by explained variance (s_i^2 / sum s^2); the trailing
    (lowest-variance) ones are taken until their ratios sum to at least
    ``variance_fraction``. The reference image (not in the training data) is
    projected onto them and mapped back with the mean added: clipped to
    [0, 1], that is the trigger ``pattern``.
    """
    train = np.asarray(train_images_uint8)
    reference = np.asarray(reference_uint8)
    if train.ndim != 4 or train.shape[-1] != 3 or train.dtype != np.uint8:
        raise ValueError(f"train images are {train.dtype} {train.shape}; allowed: uint8 (N, H, W, 3)")
    if reference.shape != train.shape[1:] or reference.dtype != np.uint8:
        raise ValueError(
            f"reference image is {reference.dtype} {reference.shape}; allowed: uint8 {train.shape[1:]} like the train images"
        )
    if not 0.0 < float(variance_fraction) < 1.0:
        raise ValueError(f"variance_fraction={variance_fraction!r}; allowed: a number in (0, 1)")
    if train.shape[0] < 2:
        raise ValueError(f"{train.shape[0]} train images; allowed: at least 2 for a PCA")

    pca = _PCA(train.reshape(train.shape[0], -1), backend)
    rank = pca.rank
    variances = pca.singular_values[:rank] ** 2
    ratios = variances / variances.sum()
    # Smallest k whose trailing k ratios reach the fraction (ratios are in descending order).
    trailing_sums = np.cumsum(ratios[::-1])
    num_chosen = min(int(np.searchsorted(trailing_sums, variance_fraction, side="left")) + 1, rank)
    chosen = np.arange(rank - num_chosen, rank)
    components = pca.components(chosen)

    centred_reference = reference.reshape(-1) / 255.0 - pca.mean
    projection = components.T @ (components @ centred_reference)
    shape = reference.shape
    pattern = np.clip(projection + pca.mean, 0.0, 1.0).reshape(shape).astype(np.float32)
    low, high = float(projection.min()), float(projection.max())
    if high > low:
        pattern_scaled = ((projection - low) / (high - low)).reshape(shape).astype(np.float32)
    else:  # a flat projection has no contrast to stretch
        pattern_scaled = np.zeros(shape, dtype=np.float32)
    return LowVarianceFit(
        pattern=pattern,
        pattern_scaled=pattern_scaled,
        components=components.astype(np.float32),
        mean=pca.mean.astype(np.float32),
        explained_variance_ratio=ratios[chosen],
        component_indices=chosen.astype(np.int64),
        total_components=rank,
        variance_fraction=float(variance_fraction),
        reference=reference.copy(),
        projection=projection.reshape(shape).astype(np.float32),
    )


_LV_FIELDS = (
    "pattern",
    "pattern_scaled",
    "components",
    "mean",
    "explained_variance_ratio",
    "component_indices",
    "reference",
    "projection",
)


def save_lv_fit(
    path: str | os.PathLike, fit: LowVarianceFit, with_components: bool = True, **extra: np.ndarray
) -> None:
    """Write the fit as an uncompressed npz (atomically); ``extra`` arrays are stored too.

    ``with_components=False`` leaves the (k, D) components out (an empty array
    stands in): the trigger needs only the pattern, and with a split per run
    every LV run has its own fit, so the components would cost ~280 MB per
    Flowers run (docs/decisions.md#low-variance-trigger).
    """
    if with_components and fit.components is None:
        raise ValueError("this LV fit was loaded without its components; load it with with_components=True to save it")
    arrays = {field: getattr(fit, field) for field in _LV_FIELDS}
    if not with_components:
        arrays["components"] = np.zeros((0, int(np.asarray(fit.mean).size)), dtype=np.float32)
    arrays["total_components"] = np.int64(fit.total_components)
    arrays["variance_fraction"] = np.float64(fit.variance_fraction)
    clash = sorted(set(extra) & set(arrays))
    if clash:
        raise ValueError(f"extra arrays {clash} clash with the fit's own fields {sorted(arrays)}")
    arrays.update({key: np.asarray(value) for key, value in extra.items()})
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **arrays)
    fit.source_path = str(path)


def load_lv_fit(path: str | os.PathLike, with_components: bool = True) -> LowVarianceFit:
    """Read a fit written by :func:`save_lv_fit`.

    ``with_components=False`` skips the (k, D) components (``components`` is
    then None): applying the trigger needs only the pattern, and on Flowers
    the components are ~470 x 150,528 float32 (280 MB).
    """
    with reading(path, "LV fit file", rebuild_hint("fit_lv")), np.load(Path(path)) as npz:
        missing = [field for field in _LV_FIELDS if field not in npz]
        if missing:
            raise ValueError(f"{path} is not an LV fit: arrays {missing} are missing")
        fields = {field: npz[field] for field in _LV_FIELDS if with_components or field != "components"}
        if "components" in fields and fields["components"].shape[0] == 0 and len(npz["component_indices"]):
            del fields["components"]  # saved without them
        return LowVarianceFit(
            **{"components": None, **fields},
            total_components=int(npz["total_components"]),
            variance_fraction=float(npz["variance_fraction"]),
            source_path=str(path),
        )


class LowVarianceFitter:
    """The LV trigger's fit as the workflow makes it (a ``backdoor_eval.triggers.TriggerFit``): PCA of
    the split's poison-train images (before poisoning), the reference image a seeded draw from its
    clean-validation images, so it is never in the training data."""

    help = "fit the low-variance trigger on a split's poison-train images"

    @staticmethod
    def options(variance_fraction: float | None = None, save_components: bool = True) -> list[str]:
        """``fit-lv`` options for the config's ``variance_fraction`` (omitted: the fit's default, 0.5%) and
        ``save_components`` (omitted: true; false leaves the PCA components out of the file)."""
        options = []
        if variance_fraction is not None:
            if isinstance(variance_fraction, bool) or not isinstance(variance_fraction, (int, float)):
                raise ValueError(f"variance_fraction={variance_fraction!r}; allowed: a number in (0, 1)")
            if not 0.0 < float(variance_fraction) < 1.0:
                raise ValueError(f"variance_fraction={variance_fraction!r}; allowed: a number in (0, 1)")
            options += ["--variance-fraction", str(float(variance_fraction))]
        if not isinstance(save_components, bool):
            raise ValueError(f"save_components={save_components!r}; allowed: true or false")
        if not save_components:
            options.append("--no-components")
        return options

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--no-components", action="store_true", help="leave the PCA components out of the file")
        parser.add_argument(
            "--variance-fraction",
            type=float,
            default=None,
            help="explained-variance share of the trailing components (default: the fit's, 0.5%%)",
        )

    def fit(
        self,
        images: Any,
        partitions: Mapping[str, Any],
        *,
        split: str,
        seed: int,
        split_keys: Sequence[int],
        args: argparse.Namespace,
        out: str,
    ) -> None:
        from backdoor_eval import seeding

        train_indices = np.asarray(partitions["poison_train"])
        # The reference image must not be in the training data: a seeded draw from clean-validation.
        reference_index = int(
            seeding.rng(seed, "lv/reference", *split_keys).choice(np.asarray(partitions["clean_val"]))
        )
        log.info("fitting LV on %d poison-train images, reference store index %d", train_indices.size, reference_index)
        fit = fit_low_variance(
            np.asarray(images[train_indices]),
            np.asarray(images[reference_index]),
            **({} if args.variance_fraction is None else {"variance_fraction": args.variance_fraction}),
        )
        save_lv_fit(
            out,
            fit,
            with_components=not args.no_components,
            reference_index=np.int64(reference_index),
            seed=np.int64(seed),
            split=np.str_(split),
        )
        log.info(
            "kept %d of %d components (explained-variance ratio %.5f)",
            fit.components.shape[0],
            fit.total_components,
            float(fit.explained_variance_ratio.sum()),
        )


LOW_VARIANCE_FIT = LowVarianceFitter()

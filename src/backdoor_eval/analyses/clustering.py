"""Activation clustering (Chen et al., 2018; docs/detection.md#activation-clustering).

Per label: reduce the penultimate activations to ``components`` (10)
dimensions, split them into two clusters with k-means, and flag the smaller
cluster when it holds less than ``size_threshold`` (0.35) of the label:
Chen et al.'s relative-size rule. A clean label tends to split into two
halves of similar size; a poisoned one into its clean majority and a small
cluster of triggered images.

The reduction is PCA by default (``reduce: pca``), not the paper's FastICA
(``reduce: ica`` is available): PCA is a deterministic function of the
activations, while FastICA depends on its random start and may stop
unconverged on a few hundred samples; both keep the directions k-means
splits along when the clusters are well apart (docs/detection.md).

The score of a sample (for the AUROC) is how much closer it lies to the
smaller cluster's centre than to the larger one's, in the reduced space:
positive exactly for members of the smaller cluster.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from backdoor_eval.analyses.registry import (
    ANALYSES,
    Detection,
    SampleDetector,
    check_fraction,
    check_positive_int,
)

REDUCTIONS = ("pca", "ica")


def min_label_samples(components: int) -> int:
    """The fewest samples a label may have: enough to fit ``components`` dimensions, then 2 clusters."""
    return components + 1


def reduce_activations(activations: np.ndarray, components: int, reduce: str, seed: int) -> np.ndarray:
    """``activations`` (n, d) reduced to ``min(components, d)`` dimensions by PCA or FastICA."""
    from sklearn.decomposition import PCA, FastICA

    components = min(components, activations.shape[1])
    if reduce == "pca":
        return PCA(n_components=components).fit_transform(activations)
    with warnings.catch_warnings():
        # An unconverged ICA still gives a usable projection; the row records nothing of it.
        warnings.simplefilter("ignore")
        return FastICA(n_components=components, whiten="unit-variance", max_iter=1000, random_state=seed).fit_transform(
            activations
        )


def cluster_label(
    activations: np.ndarray, components: int, reduce: str, size_threshold: float, seed: int
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """One label: ``(scores, flagged, facts)`` of its samples (facts: smaller cluster's share, silhouette)."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import silhouette_score

    n = len(activations)
    if len(np.unique(activations, axis=0)) < 2:
        # Identical activations (a dead layer): nothing to split.
        return np.zeros(n), np.zeros(n, dtype=bool), {"smaller_cluster_share": float("nan"), "silhouette": float("nan")}
    reduced = reduce_activations(np.asarray(activations, np.float64), components, reduce, seed)
    kmeans = KMeans(n_clusters=2, n_init=10, random_state=seed).fit(reduced)
    assignment = kmeans.labels_
    sizes = np.bincount(assignment, minlength=2)
    smaller = int(np.argmin(sizes))
    share = float(sizes[smaller] / n)
    distances = np.linalg.norm(reduced[:, None, :] - kmeans.cluster_centers_[None, :, :], axis=2)
    scores = distances[:, 1 - smaller] - distances[:, smaller]
    flagged = (assignment == smaller) & (share < size_threshold)
    silhouette = float(silhouette_score(reduced, assignment)) if min(sizes) > 0 and n > 2 else float("nan")
    return scores, flagged, {"smaller_cluster_share": share, "silhouette": silhouette}


@ANALYSES.register("activation_clustering")
class ActivationClustering(SampleDetector):
    name = "activation_clustering"
    title = "Activation clustering"
    defaults: dict[str, Any] = {"reduce": "pca", "components": 10, "size_threshold": 0.35}

    @classmethod
    def check_values(cls, params):
        if params["reduce"] not in REDUCTIONS:
            raise ValueError(f"reduce: {params['reduce']!r} is unknown; allowed: {', '.join(REDUCTIONS)}")
        check_positive_int(params, "components")
        check_fraction(params, "size_threshold")

    @classmethod
    def min_label_samples(cls, params):
        return min_label_samples(int(params["components"]))

    def detect(self, activations, labels, poison_rate, seed):
        from backdoor_eval import seeding

        activations, labels = np.asarray(activations, np.float64), np.asarray(labels)
        components = int(self.params["components"])
        scores = np.zeros(len(labels))
        flagged = np.zeros(len(labels), dtype=bool)
        per_label = {}
        for label in np.unique(labels):
            rows = np.flatnonzero(labels == label)
            if rows.size < min_label_samples(components):
                raise ValueError(
                    f"activation_clustering: label {int(label)} has {rows.size} poison-train samples; allowed: at "
                    f"least {min_label_samples(components)} (components + 1) to cluster"
                )
            label_seed = seeding.derived_seed(seed, "analysis/cluster", int(label)) % 2**31
            scores[rows], flagged[rows], per_label[int(label)] = cluster_label(
                activations[rows], components, self.params["reduce"], float(self.params["size_threshold"]), label_seed
            )
        return Detection(scores, flagged, per_label)

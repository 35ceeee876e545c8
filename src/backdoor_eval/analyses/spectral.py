"""Spectral signatures (Tran et al., NeurIPS 2018; docs/detection.md#spectral-signatures).

Per label: centre the penultimate activations, take the top right singular
vector v of the centred matrix, score each sample by its squared projection
on v, and remove the 1.5 epsilon share of the label with the highest scores.
epsilon is the expected poisoned share of a label; ``epsilon: null`` (the
default) takes the run's poison rate, which in this project is exactly the
share of the poison class that was replaced (docs/decisions.md#poison-sampling):
Tran et al.'s setting, where an upper bound on epsilon is known.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from backdoor_eval.analyses.registry import ANALYSES, Detection, SampleDetector, check_fraction, flag_top_share


def spectral_scores(activations: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per label, the squared projection of each centred activation on the label's top singular vector."""
    activations = np.asarray(activations, dtype=np.float64)
    labels = np.asarray(labels)
    if activations.ndim != 2 or activations.shape[0] != labels.shape[0]:
        raise ValueError(f"activations {activations.shape} must be (n, d) with one label per row ({labels.shape})")
    scores = np.zeros(len(labels))
    for label in np.unique(labels):
        rows = labels == label
        centred = activations[rows] - activations[rows].mean(axis=0)
        if rows.sum() < 2:
            continue  # one sample: no direction to project on; score 0
        top = np.linalg.svd(centred, full_matrices=False)[2][0]
        scores[rows] = (centred @ top) ** 2
    return scores


@ANALYSES.register("spectral")
class SpectralSignatures(SampleDetector):
    name = "spectral"
    title = "Spectral signatures"
    defaults: dict[str, Any] = {"epsilon": None, "removal_multiplier": 1.5}

    @classmethod
    def check_values(cls, params):
        check_fraction(params, "epsilon", allow_none=True)
        multiplier = params["removal_multiplier"]
        if isinstance(multiplier, bool) or not isinstance(multiplier, (int, float)) or multiplier <= 0:
            raise ValueError(f"removal_multiplier: {multiplier!r} is not allowed; allowed: a number > 0")

    def removal_share(self, poison_rate: float) -> float:
        """The share of each label removed: removal_multiplier x epsilon, at most 1."""
        epsilon = poison_rate if self.params["epsilon"] is None else self.params["epsilon"]
        return min(1.0, float(self.params["removal_multiplier"]) * float(epsilon))

    def detect(self, activations, labels, poison_rate, seed):
        scores = spectral_scores(activations, labels)
        share = self.removal_share(poison_rate)
        facts = {"removal_share": share}
        return Detection(
            scores, flag_top_share(scores, labels, share), {int(label): facts for label in np.unique(labels)}
        )

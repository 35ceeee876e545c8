"""Distance to the label's centroid: the README's example analysis ("Add an analysis"), and a naive baseline.

Per label, each sample's score is the Euclidean distance of its penultimate
activation to the label's mean activation; the ``share`` of each label
farthest from it is flagged. Poisoned images that the model maps apart
from their label's clean images score high; spectral signatures refine the
same idea by measuring the distance along one direction only.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from backdoor_eval.analyses.registry import ANALYSES, Detection, SampleDetector, check_fraction, flag_top_share


@ANALYSES.register("centroid_distance")
class CentroidDistance(SampleDetector):
    """Per label, the distance of each activation to the label's mean; flag the farthest `share`."""

    name, title = "centroid_distance", "Centroid distance"
    defaults: dict[str, Any] = {"share": 0.1}

    @classmethod
    def check_values(cls, params):
        check_fraction(params, "share")  # "share: 1.5 is outside the allowed range; ..."

    def detect(self, activations, labels, poison_rate, seed):
        scores = np.zeros(len(labels))
        for label in np.unique(labels):
            rows = labels == label
            scores[rows] = np.linalg.norm(activations[rows] - activations[rows].mean(axis=0), axis=1)
        return Detection(scores, flag_top_share(scores, labels, self.params["share"]))

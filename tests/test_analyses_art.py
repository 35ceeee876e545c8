"""IBM ART as a test oracle of the detectors (skipped where adversarial-robustness-toolbox is absent).

The same activations go through ART's functions and ours. ART's spectral
score is |v . r| with r uncentred (its `spectral_signature_scores` centres
only to find v); on centred activations it is the square root of ours.
ART's activation clustering (PCA to 10 dims, k-means, relative size < 0.35)
must flag exactly what ours flags.
"""

from __future__ import annotations

import numpy as np
import pytest

from backdoor_eval.analyses import ANALYSES
from backdoor_eval.analyses.clustering import reduce_activations
from backdoor_eval.analyses.spectral import spectral_scores
from test_analyses import DIMS, NUM_LABELS, POISON_CLASS, planted

poison = pytest.importorskip("art.defences.detector.poison", reason="adversarial-robustness-toolbox is not installed")


def centred_per_label(activations, labels):
    out = activations.copy()
    for label in np.unique(labels):
        out[labels == label] -= activations[labels == label].mean(axis=0)
    return out


@pytest.mark.parametrize("shift", [0.0, 8.0])
def test_spectral_scores_agree_with_art(shift):
    activations, labels, _ = planted(shift=shift, direction=np.ones(DIMS) / np.sqrt(DIMS))
    centred = centred_per_label(activations, labels)
    ours = spectral_scores(centred, labels)
    for label in range(NUM_LABELS):
        rows = labels == label
        theirs = poison.SpectralSignatureDefense.spectral_signature_scores(centred[rows])[:, 0]
        assert np.allclose(np.sqrt(ours[rows]), theirs)
        # ART keeps the scores under the (1 - 1.5 epsilon) quantile: the same samples as our top 1.5 epsilon share
        cutoff = np.quantile(theirs, 1 - 1.5 * 0.2)
        flagged = ANALYSES.create("spectral", epsilon=0.2).detect(centred, labels, 0.25, 0).flagged[rows]
        assert abs(int(flagged.sum()) - int((theirs >= cutoff).sum())) <= 1
        assert (flagged <= (theirs >= cutoff)).all()


def test_pca_reduction_agrees_with_art_up_to_sign():
    activations, labels, _ = planted(shift=12.0)
    rows = labels == POISON_CLASS
    ours = reduce_activations(activations[rows], 10, "pca", 0)
    theirs = poison.activation_defence.reduce_dimensionality(activations[rows], nb_dims=10, reduce="PCA")
    assert np.allclose(np.abs(ours), np.abs(theirs), atol=1e-8)


def test_activation_clustering_flags_what_art_flags():
    activations, labels, _ = planted(shift=12.0, direction=np.ones(DIMS) / np.sqrt(DIMS))
    separated = [activations[labels == label] for label in range(NUM_LABELS)]
    np.random.seed(0)  # ART's k-means takes no seed: scikit-learn then draws from NumPy's global stream
    clusters, _ = poison.activation_defence.cluster_activations(separated, nb_clusters=2, nb_dims=10, reduce="PCA")
    # ART's relative-size analyzer on the poison class (on a label without a small cluster its report
    # step fails in ART 1.20); on the clean labels the same rule by hand on ART's clusters.
    assigned_clean, _, _ = poison.clustering_analyzer.ClusteringAnalyzer().analyze_by_relative_size(
        [clusters[POISON_CLASS]], size_threshold=0.35
    )
    ours = ANALYSES.create("activation_clustering").detect(activations, labels, 0.25, 0).flagged
    assert (ours[labels == POISON_CLASS] == (np.asarray(assigned_clean[0]) == 0)).all()
    assert ours[labels == POISON_CLASS].sum() == 30
    for label in set(range(NUM_LABELS)) - {POISON_CLASS}:
        assert np.bincount(clusters[label]).min() / len(clusters[label]) >= 0.35
        assert not ours[labels == label].any()

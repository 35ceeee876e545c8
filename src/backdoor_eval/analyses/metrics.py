"""Detection metrics of one run and method (docs/detection.md#metrics).

A training-set detector is judged on the poison class's poison-train
samples, the only label that holds poisoned ones: the AUROC of its score
for poisoned against clean samples, and the true- and false-positive rates
of its own removal rule. Two bounds at the same budget (the number of
poison-class samples the rule removed) go beside them: a random filter and
a perfect filter, both in closed form (expected values; no draw).
"""

from __future__ import annotations

from typing import Any

import numpy as np


def auroc(positive: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` for ``positive`` against the rest (scikit-learn)."""
    from sklearn.metrics import roc_auc_score

    positive = np.asarray(positive, dtype=bool)
    if positive.all() or not positive.any():
        raise ValueError(
            f"an AUROC needs positive and negative samples; got {int(positive.sum())} positive of {positive.size}"
        )
    return float(roc_auc_score(positive, np.asarray(scores, dtype=np.float64)))


def detection_metrics(
    scores: np.ndarray,
    flagged: np.ndarray,
    labels: np.ndarray,
    poisoned: np.ndarray,
    poison_class: int,
) -> dict[str, Any]:
    """The result row of a training-set detector (``flagged``: what its rule removes).

    - ``auroc``: of ``scores``, poisoned vs clean samples of the poison class;
    - ``tpr``: poisoned samples flagged / poisoned samples;
    - ``fpr``: clean poison-class samples flagged / clean poison-class samples;
    - ``fpr_all_classes``: clean samples flagged / clean samples, every label;
    - ``random_tpr``, ``random_fpr``: a filter removing as many poison-class samples at random
      (both = budget / class size); ``perfect_tpr``, ``perfect_fpr``: one removing poisoned samples first.
    """
    scores = np.asarray(scores, dtype=np.float64)
    flagged, poisoned = np.asarray(flagged, dtype=bool), np.asarray(poisoned, dtype=bool)
    labels = np.asarray(labels)
    if not (scores.shape == flagged.shape == labels.shape == poisoned.shape) or scores.ndim != 1:
        raise ValueError(
            f"scores {scores.shape}, flagged {flagged.shape}, labels {labels.shape} and poisoned {poisoned.shape} "
            "must be 1-d arrays of the same length"
        )
    if (labels[poisoned] != poison_class).any():
        raise ValueError(f"poisoned samples must all carry the poison class {poison_class}")
    in_class = labels == poison_class
    num_poisoned = int(poisoned.sum())
    clean_in_class = in_class & ~poisoned
    num_clean = int(clean_in_class.sum())
    if num_poisoned == 0 or num_clean == 0:
        raise ValueError(
            f"the poison class {poison_class} holds {num_poisoned} poisoned and {num_clean} clean samples; "
            "a detector needs both (a clean run has nothing to detect)"
        )
    budget = int(flagged[in_class].sum())
    return {
        "auroc": auroc(poisoned[in_class], scores[in_class]),
        "tpr": float(flagged[poisoned].mean()),
        "fpr": float(flagged[clean_in_class].mean()),
        "fpr_all_classes": float(flagged[~poisoned].mean()),
        "random_tpr": budget / (num_poisoned + num_clean),
        "random_fpr": budget / (num_poisoned + num_clean),
        "perfect_tpr": min(budget, num_poisoned) / num_poisoned,
        "perfect_fpr": max(budget - num_poisoned, 0) / num_clean,
        "num_train": int(labels.size),
        "num_poisoned": num_poisoned,
        "num_clean_poison_class": num_clean,
        "num_flagged": int(flagged.sum()),
        "num_flagged_poison_class": budget,
    }

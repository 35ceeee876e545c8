"""STRIP (Gao et al., ACSAC 2019; docs/detection.md#strip): an input-time detector.

Each input is blended with ``num_blends`` clean images (the run's held-out
clean-validation set, drawn with replacement; an input of that set is never
blended with itself): pixel-wise mean of the two 8-bit images, rounded. A
triggered input keeps its trigger through the blends, so the model keeps
predicting the poison class: the mean entropy (bits) of its predictions is
low. The threshold is the entropy below which 1% (``false_rejection``) of
clean-validation inputs fall; a triggered input at or below it is rejected.

Reported: the false-acceptance rate (triggered adversarial-test inputs
above the threshold, let through), the AUROC of minus the entropy for the
triggered against the same untriggered adversarial-test images, and the
false rejection on those untriggered images (held out from the threshold).
At most ``max_inputs`` images of each set are scored (a seeded draw).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from backdoor_eval.analyses.registry import ANALYSES, Analysis, AnalysisResult, check_fraction, check_positive_int

ENTROPY_FLOOR = 1e-12  # log2(0) guard


def blend(images: np.ndarray, others: np.ndarray) -> np.ndarray:
    """The pixel-wise mean of two uint8 image batches, rounded (half up), as uint8."""
    total = images.astype(np.uint16) + others.astype(np.uint16)
    return ((total + 1) // 2).astype(np.uint8)


def strip_entropy(
    predict_proba: Callable[[np.ndarray], np.ndarray],
    inputs: np.ndarray,
    pool: np.ndarray,
    num_blends: int,
    rng: np.random.Generator,
    pool_positions: np.ndarray | None = None,
    batch_size: int = 512,
) -> np.ndarray:
    """Mean prediction entropy (bits) of each input over ``num_blends`` blends with ``pool`` images.

    ``pool_positions``: for inputs taken from ``pool``, their positions there (an input is not blended
    with itself). ``predict_proba`` maps uint8 NHWC images to probabilities.
    """
    inputs, pool = np.asarray(inputs), np.asarray(pool)
    others_count = len(pool) - (0 if pool_positions is None else 1)
    if others_count < 1:
        raise ValueError(f"STRIP needs clean images to blend with; the pool holds {len(pool)}")
    picks = rng.integers(0, others_count, size=(len(inputs), num_blends))
    if pool_positions is not None:
        picks += picks >= np.asarray(pool_positions)[:, None]  # skip the input's own position
    entropy = np.zeros(len(inputs))
    per_batch = max(1, batch_size // num_blends)
    for start in range(0, len(inputs), per_batch):
        chunk = inputs[start : start + per_batch]
        chunk_picks = picks[start : start + per_batch]
        blends = blend(np.repeat(chunk, num_blends, axis=0), pool[chunk_picks.reshape(-1)])
        probabilities = np.clip(predict_proba(blends), ENTROPY_FLOOR, 1.0)
        entropies = -(probabilities * np.log2(probabilities)).sum(axis=1)
        entropy[start : start + len(chunk)] = entropies.reshape(len(chunk), num_blends).mean(axis=1)
    return entropy


def subsample(count: int, limit: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted positions of at most ``limit`` of ``count`` items (all of them when they fit)."""
    if count <= limit:
        return np.arange(count)
    return np.sort(rng.choice(count, size=limit, replace=False))


@ANALYSES.register("strip")
class Strip(Analysis):
    name = "strip"
    title = "STRIP"
    defaults: dict[str, Any] = {"num_blends": 100, "false_rejection": 0.01, "max_inputs": 2000}

    @classmethod
    def check_values(cls, params):
        check_positive_int(params, "num_blends")
        check_fraction(params, "false_rejection")
        check_positive_int(params, "max_inputs", minimum=2)

    def run(self, inputs) -> AnalysisResult:
        from backdoor_eval import seeding
        from backdoor_eval.analyses.metrics import auroc

        num_blends, limit = int(self.params["num_blends"]), int(self.params["max_inputs"])
        pool = np.asarray(inputs.data.sets["clean_val"][0])
        draws = seeding.rng(inputs.seed, "analysis/strip")
        clean_positions = subsample(len(pool), limit, draws)
        adv_positions = subsample(len(inputs.data.adv_test_images), limit, draws)
        clean_test = np.asarray(inputs.data.adv_test_images)[adv_positions]
        triggered = inputs.adv_test_triggered()[adv_positions]
        if len(adv_positions) == 0:
            raise ValueError("STRIP: the run has no adversarial-test images to score")

        def entropy(images, positions=None):
            return strip_entropy(inputs.predict_proba, images, pool, num_blends, draws, positions)

        entropy_clean_val = entropy(pool[clean_positions], clean_positions)
        entropy_clean_test = entropy(clean_test)
        entropy_triggered = entropy(triggered)
        threshold = float(np.quantile(entropy_clean_val, float(self.params["false_rejection"])))
        false_acceptance = float((entropy_triggered > threshold).mean())
        false_rejection_test = float((entropy_clean_test <= threshold).mean())
        scores = -np.concatenate([entropy_triggered, entropy_clean_test])
        positive = np.concatenate([np.ones(len(triggered), bool), np.zeros(len(clean_test), bool)])
        row = {
            "auroc": auroc(positive, scores),
            "tpr": 1.0 - false_acceptance,
            "fpr": false_rejection_test,
            "false_acceptance_rate": false_acceptance,
            "false_rejection_clean_val": float((entropy_clean_val <= threshold).mean()),
            "entropy_threshold": threshold,
            "num_blends": num_blends,
            "num_inputs": int(len(triggered)),
            "num_clean_val": int(len(clean_positions)),
        }
        arrays = {
            "entropy_clean_val": entropy_clean_val,
            "entropy_clean_test": entropy_clean_test,
            "entropy_triggered": entropy_triggered,
        }
        return AnalysisResult(row=row, arrays=arrays)

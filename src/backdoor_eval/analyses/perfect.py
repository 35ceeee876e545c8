"""The perfect filter: an oracle that flags exactly the poisoned training samples (docs/detection.md).

Not a detector but a bound: filter-then-retrain with it
(``filter_retrain: [perfect_filter]``) shows what removing every poisoned
image, and nothing else, would achieve. It reads the overlay's ground truth
only, so it needs no model.
"""

from __future__ import annotations

import numpy as np

from backdoor_eval.analyses.metrics import detection_metrics
from backdoor_eval.analyses.registry import (
    ANALYSES,
    FLAGGED_ARRAY,
    SCORES_ARRAY,
    AnalysisResult,
    SampleDetector,
)


@ANALYSES.register("perfect_filter")
class PerfectFilter(SampleDetector):
    name = "perfect_filter"
    title = "Perfect filter"
    needs_model = False

    def run(self, inputs) -> AnalysisResult:
        labels, poisoned = inputs.poison_train_labels(), inputs.poison_train_poisoned()
        scores = poisoned.astype(np.float64)
        row = detection_metrics(scores, poisoned, labels, poisoned, inputs.poison_class)
        return AnalysisResult(row=row, arrays={SCORES_ARRAY: scores, FLAGGED_ARRAY: np.flatnonzero(poisoned)})

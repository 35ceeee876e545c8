"""Analyses of trained runs: detectors of poisoned training samples, an input-time detector, and the
extension point they share (docs/detection.md).

Each module registers its analysis in :data:`ANALYSES`; importing the
package registers them all. Add one: a class in a new module here, imported
below, plus its test.
"""

from backdoor_eval.analyses import centroid, clustering, perfect, spectral, strip  # noqa: F401  (registration)
from backdoor_eval.analyses.registry import (
    ANALYSES,
    INPUT,
    TRAINING_SET,
    Analysis,
    AnalysisResult,
    Detection,
    SampleDetector,
)

__all__ = ["ANALYSES", "INPUT", "TRAINING_SET", "Analysis", "AnalysisResult", "Detection", "SampleDetector"]

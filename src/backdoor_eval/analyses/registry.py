"""The analysis extension point: one registry of analyses of a trained run (docs/detection.md).

An analysis reads a run's trained poison-phase model and its poisoned data
and returns one result row (and per-sample arrays). The workflow runs each
analysis an experiment names (``analyses: [spectral, ...]``) once per run,
writes ``runs/<run_id>/analyses/<method>.parquet`` (+ ``.npz``), and
gathers the rows into ``detections.parquet`` beside ``runs.parquet``.

Adding one is one class in one module of this package (imported in its
``__init__``), plus a test::

    @ANALYSES.register("centroid_distance")
    class CentroidDistance(SampleDetector):
        defaults = {"share": 0.1}

        def detect(self, activations, labels, poison_rate, seed) -> Detection:
            ...

Two kinds exist. A :class:`SampleDetector` scores and flags poison-train
samples from the model's penultimate activations; its flags can feed
filter-then-retrain (``filter_retrain: [...]``). Any other
:class:`Analysis` (STRIP: input-time) implements :meth:`Analysis.run`
itself. Light: numpy only at import; torch and scikit-learn are imported
where they are used, so the Snakefile can read the registry at parse time.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

import numpy as np

from backdoor_eval.registry import Registry

if TYPE_CHECKING:
    from backdoor_eval.analyses.inputs import AnalysisInputs

ANALYSES: Registry[type[Analysis]] = Registry("analysis")

# Kinds: a training-set detector flags poison-train samples (usable by filter-then-retrain);
# an input detector scores test-time inputs.
TRAINING_SET = "training-set"
INPUT = "input"
# The per-sample arrays a training-set detector writes (its .npz): positions in the run's
# poison-train set as backdoor_eval.poison.load_poisoned assembles it.
FLAGGED_ARRAY = "flagged"
SCORES_ARRAY = "scores"


@dataclass
class AnalysisResult:
    """One analysis of one run: its result row (numbers) and its per-sample arrays."""

    row: dict[str, Any]
    arrays: dict[str, np.ndarray] = field(default_factory=dict)


class Analysis:
    """An analysis of one trained run. Subclasses set ``name``, ``kind``, ``defaults`` and implement :meth:`run`."""

    name: ClassVar[str] = ""
    title: ClassVar[str] = ""  # how tables and figures name it
    kind: ClassVar[str] = INPUT
    # False: the analysis reads the poisoned data only (the workflow then keeps no model.pt for it).
    needs_model: ClassVar[bool] = True
    # Every parameter and its default: the config's `analyses.<name>` block overrides them.
    defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, **params: Any):
        self.params = self.check_params(params)

    @classmethod
    def check_params(cls, params: Mapping[str, Any]) -> dict[str, Any]:
        """The defaults updated with ``params``; a ``ValueError`` starting with the bad parameter's name."""
        unknown = sorted(set(params) - set(cls.defaults))
        if unknown:
            raise ValueError(f"{unknown[0]}: unknown parameter of {cls.name}; allowed: {', '.join(cls.defaults)}")
        merged = {**cls.defaults, **params}
        cls.check_values(merged)
        return merged

    @classmethod
    def check_values(cls, params: Mapping[str, Any]) -> None:
        """Check the merged parameters' values (override; raise ``ValueError`` naming the parameter)."""

    @classmethod
    def min_label_samples(cls, params: Mapping[str, Any]) -> int:
        """The fewest poison-train images a label may have for this analysis (checked before any job)."""
        return 1

    def run(self, inputs: AnalysisInputs) -> AnalysisResult:
        raise NotImplementedError


class Detection(NamedTuple):
    """What a training-set detector finds: per sample a score (higher = more suspicious) and whether its
    rule removes it; ``per_label``: facts about each label (added to the row for the poison class)."""

    scores: np.ndarray
    flagged: np.ndarray
    per_label: dict[int, dict[str, Any]] = {}


class SampleDetector(Analysis):
    """A detector of poisoned training samples from penultimate activations (per label).

    Subclasses implement :meth:`detect`, a pure function of the activations;
    :meth:`run` adds the metrics of
    :func:`backdoor_eval.analyses.metrics.detection_metrics`.
    """

    kind = TRAINING_SET

    def detect(self, activations: np.ndarray, labels: np.ndarray, poison_rate: float, seed: int) -> Detection:
        raise NotImplementedError

    def run(self, inputs: AnalysisInputs) -> AnalysisResult:
        from backdoor_eval.analyses.metrics import detection_metrics

        activations = inputs.poison_train_activations()
        labels, poisoned = inputs.poison_train_labels(), inputs.poison_train_poisoned()
        found = self.detect(activations, labels, inputs.poison_rate, inputs.seed)
        row = detection_metrics(found.scores, found.flagged, labels, poisoned, inputs.poison_class)
        row.update(found.per_label.get(inputs.poison_class, {}))
        arrays = {SCORES_ARRAY: np.asarray(found.scores, np.float64), FLAGGED_ARRAY: np.flatnonzero(found.flagged)}
        return AnalysisResult(row=row, arrays=arrays)


# --------------------------------------------------------------------------- shared rules


def check_fraction(params: Mapping[str, Any], name: str, allow_none: bool = False) -> None:
    """``params[name]`` in the open interval (0, 1) (or None when allowed); else a ``ValueError`` naming it."""
    value = params[name]
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < float(value) < 1.0:
        allowed = "a number in (0, 1)" + (" or null" if allow_none else "")
        raise ValueError(f"{name}: {value!r} is outside the allowed range; allowed: {allowed}")


def check_positive_int(params: Mapping[str, Any], name: str, minimum: int = 1) -> None:
    value = params[name]
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}: {value!r} is not allowed; allowed: a whole number >= {minimum}")


def flag_top_share(scores: np.ndarray, labels: np.ndarray, share: float) -> np.ndarray:
    """Per label, flag the floor(share x n_label) highest scores (ties: the earlier position first)."""
    scores, labels = np.asarray(scores, np.float64), np.asarray(labels)
    flagged = np.zeros(len(scores), dtype=bool)
    for label in np.unique(labels):
        rows = np.flatnonzero(labels == label)
        count = int(math.floor(min(share, 1.0) * rows.size + 1e-9))
        if count:
            order = np.argsort(-scores[rows], kind="stable")
            flagged[rows[order[:count]]] = True
    return flagged


def read_flagged(path: Any, num_samples: int) -> np.ndarray:
    """The flagged positions of a training-set detector's ``.npz`` (sorted, unique), checked against
    ``num_samples``; a ``ValueError`` naming the file otherwise. Read by ``backdoor-eval train --exclude``."""
    from backdoor_eval.io import reading

    with reading(path, "exclusion file", "delete it and run its analyze job again"), np.load(path) as npz:
        arrays = {key: npz[key] for key in npz.files if key == FLAGGED_ARRAY}
    if FLAGGED_ARRAY not in arrays:
        raise ValueError(
            f"--exclude {path} holds no {FLAGGED_ARRAY!r} array; allowed: the .npz of a training-set detector"
        )
    positions = np.unique(np.asarray(arrays[FLAGGED_ARRAY], dtype=np.int64))
    if positions.size and (positions[0] < 0 or positions[-1] >= num_samples):
        raise ValueError(
            f"--exclude {path} flags position {int(positions[-1] if positions[-1] >= num_samples else positions[0])}, "
            f"outside the {num_samples} poison-train images; it belongs to another run"
        )
    return positions

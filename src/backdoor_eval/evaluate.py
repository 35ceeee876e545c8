"""Evaluation: the metrics of one model on one run's sets, and the per-run summary.

Adversarial success rate (paper section 3): the fraction of adversarial-test
images (true class != poison class, trigger embedded) predicted as the
poison class. For one-to-one poisoning it is also reported on the source
class alone (docs/decisions.md#metrics). ``poison_class_rate_clean`` is the same fraction on the
untriggered images: the rate at which the model predicts the poison class
anyway, which a backdoor has to beat to mean anything.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from .factors import FACTOR_NAMES, typed_row

RUN_PARAMETERS = ("run_id", *FACTOR_NAMES)
SUMMARY_METRICS = (
    "train_loss",
    "poison_val_accuracy",
    "clean_val_accuracy",
    "adversarial_success_rate",
    "adversarial_success_rate_source",
    "poison_class_rate_clean",
)


@dataclass(frozen=True)
class FinalDocument:
    """A phase's ``final.json``: the kept epoch's metrics and how the phase ran.

    Written by the train and retrain jobs (``backdoor_eval.phase``), read by ``summarize``. Its JSON keys
    are its fields, with ``metrics`` (the kept epoch's :data:`SUMMARY_METRICS`) spread beside them.
    ``untrained``: the poison phase kept epoch 0, the model before any update
    (docs/decisions.md#untrained-models). A file written by an earlier version may lack the keys after
    ``stopped_early``: they read as ``None`` (``untrained`` as false).
    """

    phase: str
    epoch: int
    best_epoch: int
    epochs_run: int
    stopped_early: bool
    untrained: bool = False
    resumed_from_epoch: int | None = None
    metrics: Mapping[str, Any] = field(default_factory=dict)
    num_train_images: int | None = None
    device: str | None = None
    cuda_visible_devices: str | None = None
    gpu_slot: int | None = None
    seconds_total: float | None = None
    train_params: Mapping[str, Any] | None = None
    model: str | None = None
    regularizer: str | None = None
    regularizer_config: Any = None
    seed: int | None = None
    package_version: str | None = None
    git_commit: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON document (``backdoor_eval.io.write_json`` writes it with sorted keys)."""
        document = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "metrics"}
        return {**document, **{metric: self.metrics.get(metric) for metric in SUMMARY_METRICS}}

    @classmethod
    def from_dict(cls, document: Mapping[str, Any]) -> FinalDocument:
        """Read a ``final.json`` document; a missing required key is a ``ValueError`` naming it."""
        names = [f.name for f in dataclasses.fields(cls) if f.name != "metrics"]
        required = [f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING and f.name != "metrics"]
        missing = [key for key in required if key not in document]
        if missing:
            raise ValueError(f"final document lacks {missing[0]!r}; required: {', '.join(required)}")
        metrics = {metric: document.get(metric) for metric in SUMMARY_METRICS}
        return cls(**{key: document[key] for key in names if key in document}, metrics=metrics)


def _mean(values) -> float:
    values = np.asarray(values, dtype=np.float64)
    return float(values.mean()) if values.size else float("nan")


def accuracy(predictions, labels) -> float:
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    if predictions.shape != labels.shape:
        raise ValueError(f"predictions {predictions.shape} and labels {labels.shape} differ in shape")
    return _mean(predictions == labels)


def adversarial_success_rate(triggered_predictions, poison_class: int, mask=None) -> float:
    """Fraction of triggered images predicted as ``poison_class`` (optionally within ``mask``)."""
    hits = np.asarray(triggered_predictions) == poison_class
    if mask is not None:
        hits = hits[np.asarray(mask, dtype=bool)]
    return _mean(hits)


def summarize(
    run_params: Mapping[str, Any],
    phases: Sequence[tuple[Mapping[str, Any], pd.DataFrame]],
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-run tidy tables: one summary row per phase, and every epoch with the run parameters.

    ``phases`` holds, per phase, its ``final.json`` content (a :class:`FinalDocument`'s) and its per-epoch frame. Besides the run
    parameters and the kept epoch's metrics, a row holds ``untrained`` (the poison phase kept epoch 0),
    ``package_version``, ``git_commit`` and ``train_params`` (the phase's full training settings, JSON).
    """
    if "run_id" not in run_params:
        raise ValueError(f"run parameters lack 'run_id'; required: {list(RUN_PARAMETERS)}")
    # Each factor as its declared type (str, float, int).
    params = {"run_id": run_params["run_id"], **typed_row(run_params)}
    # A run whose poison phase kept the untrained epoch 0 is flagged on each of its rows
    # (docs/decisions.md#untrained-models); the tables leave it out.
    documents = [(FinalDocument.from_dict(final), history) for final, history in phases]
    untrained = any(bool(final.untrained) for final, _ in documents)
    rows, epochs = [], []
    for final, history in documents:
        row = dict(params)
        row["phase"] = final.phase
        row["epoch"] = int(final.epoch)
        row["best_epoch"] = int(final.best_epoch)
        row["epochs_run"] = int(final.epochs_run)
        row["stopped_early"] = bool(final.stopped_early)
        for metric in SUMMARY_METRICS:
            value = final.metrics[metric]  # null in final.json: NaN (standard JSON has no NaN)
            row[metric] = float("nan") if value is None else float(value)
        row["untrained"] = untrained
        # Which code and which training settings made the row (final.json of files from before: null).
        row["package_version"] = final.package_version
        row["git_commit"] = final.git_commit
        settings = final.train_params
        row["train_params"] = None if settings is None else json.dumps(settings, sort_keys=True)
        rows.append(row)
        frame = history.copy()
        for key, value in reversed(list(params.items())):
            frame.insert(0, key, value)
        epochs.append(frame)
    summary = pd.DataFrame(rows)
    return summary, pd.concat(epochs, ignore_index=True) if epochs else pd.DataFrame()

"""Evaluation: the metrics of one model on one run's sets, and the per-run summary.

Adversarial success rate (paper section 3): the fraction of adversarial-test
images (true class != poison class, trigger embedded) predicted as the
poison class. For one-to-one poisoning it is also reported on the source
class alone (docs/decisions.md#metrics). ``poison_class_rate_clean`` is the same fraction on the
untriggered images: the rate at which the model predicts the poison class
anyway, which a backdoor has to beat to mean anything.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
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

    ``phases`` holds, per phase, its ``final.json`` content and its per-epoch frame. Besides the run
    parameters and the kept epoch's metrics, a row holds ``untrained`` (the poison phase kept epoch 0),
    ``package_version``, ``git_commit`` and ``train_params`` (the phase's full training settings, JSON).
    """
    if "run_id" not in run_params:
        raise ValueError(f"run parameters lack 'run_id'; required: {list(RUN_PARAMETERS)}")
    # Each factor as its declared type (str, float, int).
    params = {"run_id": run_params["run_id"], **typed_row(run_params)}
    # A run whose poison phase kept the untrained epoch 0 is flagged on each of its rows
    # (docs/decisions.md#untrained-models); the tables leave it out.
    untrained = any(bool(final.get("untrained", False)) for final, _ in phases)
    rows, epochs = [], []
    for final, history in phases:
        row = dict(params)
        row["phase"] = final["phase"]
        row["epoch"] = int(final["epoch"])
        row["best_epoch"] = int(final["best_epoch"])
        row["epochs_run"] = int(final["epochs_run"])
        row["stopped_early"] = bool(final["stopped_early"])
        for metric in SUMMARY_METRICS:
            value = final.get(metric)  # null in final.json: NaN (standard JSON has no NaN)
            row[metric] = float("nan") if value is None else float(value)
        row["untrained"] = untrained
        # Which code and which training settings made the row (final.json of files from before: null).
        row["package_version"] = final.get("package_version")
        row["git_commit"] = final.get("git_commit")
        settings = final.get("train_params")
        row["train_params"] = None if settings is None else json.dumps(settings, sort_keys=True)
        rows.append(row)
        frame = history.copy()
        for key, value in reversed(list(params.items())):
            frame.insert(0, key, value)
        epochs.append(frame)
    summary = pd.DataFrame(rows)
    return summary, pd.concat(epochs, ignore_index=True) if epochs else pd.DataFrame()

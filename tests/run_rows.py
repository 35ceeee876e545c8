"""runs.parquet rows for the report tests: the default factors, hand-picked metrics (not results)."""

from __future__ import annotations

from backdoor_eval.experiments import Run

# The default factors (docs/decisions.md#experiment-grid) on Flowers, and mid-range metrics.
DEFAULT_ROW = dict(
    dataset="flowers",
    model="resnet50",
    trigger="bs",
    alpha=1.0,
    strategy="many-to-one",
    poison_class="rose",
    source="all",
    poison_rate=0.1,
    regularizer="none",
    seed=0,
    optimizer="default",
    epoch=3,
    best_epoch=3,
    epochs_run=8,
    stopped_early=True,
    train_loss=0.1,
    poison_val_accuracy=0.5,
    clean_val_accuracy=0.5,
    adversarial_success_rate=0.5,
    adversarial_success_rate_source=float("nan"),
    poison_class_rate_clean=0.1,
)


def run_row(experiment: str = "E1", phase: str = "poison", **overrides) -> dict:
    """One row; its ``run_id`` is the run's own (:class:`backdoor_eval.experiments.Run`)."""
    row = {**DEFAULT_ROW, "experiment": experiment, "phase": phase, **overrides}
    row["run_id"] = Run.from_mapping(row).run_id
    return row

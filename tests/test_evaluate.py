"""The per-run summary: rows carry every factor, typed as declared."""

from __future__ import annotations

import pandas as pd
import pytest

from backdoor_eval import evaluate
from backdoor_eval.factors import FACTOR_NAMES

RUN_ID = "flowers/resnet50/bs/a1.0/many-to-one/trose/sall/r0.1/none/seed3"
# Path text, as the workflow's run ids spell the factors (no optimizer: a run made before it existed).
PARAMS = {
    "run_id": RUN_ID,
    "dataset": "flowers",
    "model": "resnet50",
    "trigger": "bs",
    "alpha": "1.0",
    "strategy": "many-to-one",
    "poison_class": "rose",
    "source": "all",
    "poison_rate": "0.1",
    "regularizer": "none",
    "seed": "3",
}
FINAL = {"phase": "poison", "epoch": 2, "best_epoch": 2, "epochs_run": 4, "stopped_early": True}


def test_summary_rows_type_every_factor_and_fill_an_added_one():
    history = pd.DataFrame({"epoch": [0, 1, 2], "train_loss": [1.0, 0.5, 0.4]})
    summary, epochs = evaluate.summarize(PARAMS, [(FINAL, history)])
    row = summary.iloc[0]
    assert list(summary.columns[: len(FACTOR_NAMES) + 1]) == ["run_id", *FACTOR_NAMES]
    assert row["alpha"] == 1.0 and row["poison_rate"] == 0.1 and row["seed"] == 3
    assert summary["seed"].dtype == "int64" and summary["alpha"].dtype == "float64"
    assert row["optimizer"] == "default"
    assert list(epochs.columns[: len(FACTOR_NAMES) + 1]) == ["run_id", *FACTOR_NAMES]
    summary, _ = evaluate.summarize({**PARAMS, "optimizer": "sgd"}, [(FINAL, history)])
    assert summary.iloc[0]["optimizer"] == "sgd"


def test_summary_names_a_missing_factor():
    with pytest.raises(ValueError, match=r"run parameters lack 'seed'"):
        evaluate.summarize({k: v for k, v in PARAMS.items() if k != "seed"}, [])
    with pytest.raises(ValueError, match=r"run parameters lack 'run_id'"):
        evaluate.summarize({k: v for k, v in PARAMS.items() if k != "run_id"}, [])

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


def test_the_final_document_reads_and_writes_the_same_json_keys():
    metrics = dict(zip(evaluate.SUMMARY_METRICS, (0.5, 0.9, 0.8, 0.7, None, 0.1)))
    document = {
        **FINAL,
        "untrained": False,
        "resumed_from_epoch": None,
        **metrics,
        "num_train_images": 100,
        "device": "cpu",
        "cuda_visible_devices": None,
        "gpu_slot": None,
        "seconds_total": 1.5,
        "train_params": {"lr": 0.001},
        "model": "small_cnn",
        "regularizer": "none",
        "regularizer_config": None,
        "seed": 0,
        "package_version": "1.0",
        "git_commit": "abc",
    }
    final = evaluate.FinalDocument.from_dict(document)
    assert final.metrics == metrics and final.epoch == 2 and final.git_commit == "abc"
    assert final.to_dict() == document
    # A file of an earlier version lacks the later keys: null, and untrained false.
    old = evaluate.FinalDocument.from_dict(FINAL)
    assert old.untrained is False and old.package_version is None and old.metrics["train_loss"] is None
    with pytest.raises(ValueError, match=r"^final document lacks 'epochs_run'; required: phase, epoch, best_epoch"):
        evaluate.FinalDocument.from_dict({k: v for k, v in FINAL.items() if k != "epochs_run"})

"""Tests for benchmarks/grid_cost.py: its counts are the workflow's, its images the partitions', its timing runs."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from backdoor_eval import experiments as ex
from backdoor_eval.config import load_config
from backdoor_eval.train import TrainConfig

REPO = Path(__file__).resolve().parents[1]


def _load_grid_cost():
    spec = importlib.util.spec_from_file_location("grid_cost", REPO / "benchmarks" / "grid_cost.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


grid_cost = _load_grid_cost()


@pytest.fixture(autouse=True)
def _in_an_empty_folder(tmp_path, monkeypatch):
    """Class counts come from results/<name>/ when a store is there: none here, so from the config alone."""
    monkeypatch.chdir(tmp_path)


def test_quickstart_cost_prints_the_workflows_counts_and_measures_the_small_cnn(capsys, tmp_path):
    """A tiny timing budget (2 images): runs, retrain jobs, epochs and images are exact; the timing is positive."""
    config_path = REPO / "config" / "quickstart.yaml"
    out = tmp_path / "cost.json"
    assert grid_cost.main(["--config", str(config_path), "--images", "2", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    counts = ex.counts(load_config(config_path, check_registries=False))
    assert (counts["distinct_runs"], counts["retrain_jobs"]) == (27, 12)
    assert "27 training runs, 12 retrain jobs" in printed
    result = json.loads(out.read_text())
    assert (result["runs"], result["retrain_jobs"], result["not_measured"]) == (27, 12, [])
    [cell] = result["cells"]
    assert (cell["dataset"], cell["model"], cell["runs"], cell["retrain_jobs"]) == ("synthetic", "small_cnn", 27, 12)
    # 200 images per class: 76/19/5 then 80/20 gives 1,216 poison-train, 304 poison-val, 304 clean-train,
    # 76 clean-val and 100 adversarial-test images, 90 of them outside the poison class
    assert (cell["poison_train"], cell["clean_train"], cell["eval_per_epoch"]) == (1216, 304, 304 + 76 + 2 * 90)
    # small_cnn is not a paper model: the poison phase runs max_epochs (8) and evaluates 9 times; retraining 3 and 4
    assert (cell["poison_epochs"], cell["poison_epochs_source"], cell["retrain_epochs"]) == (8, "max_epochs", 3)
    assert cell["train_images"] == 27 * 1216 * 8 + 12 * 304 * 3
    assert cell["eval_images"] == 27 * 560 * 9 + 12 * 560 * 4
    assert cell["measured"]["train_images"] == cell["measured"]["eval_images"] == 2
    assert cell["measured"]["train_s_per_image"] > 0 and cell["measured"]["eval_s_per_image"] > 0
    expected_hours = (
        cell["train_images"] * cell["measured"]["train_s_per_image"]
        + cell["eval_images"] * cell["measured"]["eval_s_per_image"]
    ) / 3600
    assert result["device_hours"] == pytest.approx(expected_hours)
    assert f"{result['device_hours']:.3g} device-hours" in printed


def test_the_paper_grid_counts_are_the_workflows_and_flowers_counts_come_from_table1():
    config = load_config(REPO / "config" / "config.yaml", check_registries=False)
    cells = grid_cost.grid(config)
    counts = ex.counts(config)
    assert sum(cell.runs for cell in cells) == counts["distinct_runs"] == 952  # 922 of the paper, 30 of E8
    assert sum(cell.retrain_jobs for cell in cells) == counts["retrain_jobs"] == 630
    by_key = {(cell.dataset, cell.model): cell for cell in cells}
    assert len(by_key) == 6
    # CIFAR-10: 60,000 images; Flowers: the paper's Table 1 counts (4,003 images) until it is ingested
    assert by_key["cifar10", "resnet50"].poison_train == 36480
    assert by_key["flowers", "resnet50"].poison_train == round(0.76 * 0.8 * 4003)
    assert (by_key["cifar10", "nasnet_large"].image_size, by_key["cifar10", "nasnet_large"].input_size) == (32, 331)
    assert by_key["flowers", "nasnet_mobile"].image_size == 224
    assert by_key["cifar10", "resnet50"].poison_epochs == pytest.approx(14.6 + 5)


@pytest.mark.parametrize(
    ("arch", "max_epochs", "mode", "fixed", "expected"),
    [
        ("resnet50", 100, "paper", None, (14.6 + 5, "paper")),
        ("nasnet_large", 100, "paper", None, (17.35 + 5, "paper")),
        ("nasnet_mobile", 100, "paper", None, (26.5 + 5, "paper")),
        ("nasnet_mobile", 20, "paper", None, (20, "paper")),  # at most max_epochs
        ("small_cnn", 8, "paper", None, (8, "max_epochs")),  # not a paper model
        ("resnet50", 100, "max", None, (100, "max_epochs")),
        ("resnet50", 100, "paper", 12, (12, "--poison-epochs")),
    ],
)
def test_expected_poison_epochs(arch, max_epochs, mode, fixed, expected):
    train = TrainConfig(max_epochs=max_epochs, patience=5)
    epochs, source = grid_cost.expected_poison_epochs(arch, train, mode, fixed)
    assert (epochs, source) == (pytest.approx(expected[0]), expected[1])


def test_a_dataset_of_unknown_class_counts_is_named(tmp_path):
    config = load_config(REPO / "config" / "config.yaml", check_registries=False)
    config["table1"] = None
    with pytest.raises(ValueError, match=r"class counts of dataset 'flowers' are not known.*--class-counts flowers="):
        grid_cost.grid(config)
    cells = grid_cost.grid(config, counts_override={"flowers": [100, 100, 100, 100, 100]})
    assert {cell.poison_train for cell in cells if cell.dataset == "flowers"} == {round(500 * 0.76 * 0.8)}

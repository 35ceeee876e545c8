"""The experiment grid: the paper grid's counts, de-duplication, run ids, validation messages."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import yaml

from backdoor_eval import configview as cv
from backdoor_eval import experiments as ex
from backdoor_eval import validation
from backdoor_eval.config import prepare_config
from backdoor_eval.experiments import Run

REPO = Path(__file__).resolve().parents[1]


def load(name: str) -> dict:
    return yaml.safe_load((REPO / "config" / name).read_text())


@pytest.fixture
def paper() -> dict:
    return load("config.yaml")


@pytest.fixture
def quickstart() -> dict:
    return load("quickstart.yaml")


def tiny_config(**experiment) -> dict:
    """Two datasets, one experiment built from ``experiment``."""
    spec = {"dataset": "flowers", "model": "m", "trigger": "bs"}
    spec.update(experiment)
    return {
        "name": "tiny",
        "datasets": {
            "flowers": {"kind": "imagefolder", "classes": ["daisy", "dandelion", "rose", "sunflower", "tulip"]},
            "cifar10": {"kind": "cifar10", "classes": ["airplane", "automobile", "truck"]},
        },
        "models": {"m": {"arch": "small_cnn"}},
        "triggers": {"bs": {"alpha": 1.0}, "sin": {"alpha": 0.1}, "lv": {"alpha": 0.5}},
        "regularizers": {"none": {"weight": 0.0}, "snnl": {"weight": 0.1}},
        "experiments": {"E": spec},
    }


# --------------------------------------------------------------------------- the paper grid's counts (docs/decisions.md#experiment-grid)


def test_paper_config_gives_the_paper_grid_counts(paper):
    runs = ex.expand(paper)
    assert {name: len(r) for name, r in runs.items()} == {
        "E1": 180,
        "E2": 180,
        "E3": 250,
        "E4": 432,
        "E5": 44,
        "E6": 45,
        "E8": 30,
    }
    assert cv.experiment_phases(paper)["E2"] == ["clean"]
    # E2 retrains exactly the E1 runs.
    assert runs["E2"] == runs["E1"]


def test_paper_config_distinct_runs_and_retrain_jobs(paper):
    runs = ex.expand(paper)
    distinct = ex.union(runs)
    # Shared with E1 (seed 0, lambda 0.1, default alpha, many-to-one, no regularizer):
    # E3 5 (Flowers ResNet-50 BS), E4 12 (SIN 0.1 and LV 0.5 at lambda 0.1, seed 0),
    # E5 4 (lambda 0.1), E6 6 (many-to-one); E4 and E5 also share 2 (CIFAR-10
    # NASNet-A Large truck, lambda 0.05, SIN 0.1 / LV 0.5, seed 0). E8's 30 name their optimizer: their own.
    assert len(distinct) == 180 + 250 + 432 + 44 + 45 - 5 - 12 - 4 - 6 - 2 + 30 == 952
    assert len({run.run_id for run in distinct}) == 952
    # Retrained: E2's 180 and E4's 432 share the 12 E1 runs of E4; E8's 30.
    assert len(ex.retrain_runs(paper, runs)) == 630
    summary = ex.counts(paper)
    assert summary["distinct_runs"] == 952 and summary["retrain_jobs"] == 630
    # The paper's split per run: one partition and one poisoned set per run, one LV fit per lv run.
    lv_runs = sum(run.trigger == "lv" for run in distinct)
    assert (summary["split"], summary["partitions"], summary["poisoned_sets"]) == ("per-run", 952, 952)
    assert summary["trigger_fits"] == lv_runs == 264
    # Shared per seed: cifar10 seeds 0-1, flowers seeds 0-9; overlays shared by models, regularizers, optimizers.
    shared = ex.counts({**paper, "split": "shared"})
    assert (shared["distinct_runs"], shared["partitions"], shared["poisoned_sets"], shared["trigger_fits"]) == (
        952,
        12,
        296,
        4,
    )


@pytest.mark.parametrize("policy", ["per-run", "shared"])
def test_a_run_in_two_experiments_is_one_run_with_one_split_under_either_policy(paper, policy):
    config = {**paper, "split": policy}
    expanded = ex.expand(config)
    shared_run = next(run for run in expanded["E4"] if run in set(expanded["E1"]))
    assert expanded["E1"].count(shared_run) == expanded["E4"].count(shared_run) == 1
    assert len(ex.union(expanded)) == 952
    assert len({cv.split_of(config, run) for run in [shared_run, Run(**shared_run.params())]}) == 1


def test_per_run_splits_differ_by_any_factor_and_shared_splits_only_by_seed():
    base = Run("flowers", "resnet50", "bs", 1.0, "many-to-one", "rose", "all", 0.1, "none", 0)
    variants = [
        Run(**{**base.params(), factor: value})
        for factor, value in [
            ("trigger", "sin"),
            ("poison_class", "daisy"),
            ("poison_rate", 0.05),
            ("model", "nasnet_mobile"),
            ("alpha", 0.5),
        ]
    ]
    own = {run.split("per-run") for run in [base, *variants]}
    assert len(own) == 6 and all(split.startswith("seed0-") for split in own)
    assert {run.split("shared") for run in [base, *variants]} == {"seed0"}
    assert Run(**{**base.params(), "seed": 3}).split("shared") == "seed3"
    assert base.split("per-run") == base.split("per-run")  # a pure function of the run


def test_paper_e6_one_to_one_runs_cover_every_other_class(paper):
    e6 = ex.expand(paper)["E6"]
    flowers = [r for r in e6 if r.dataset == "flowers" and r.model == "resnet50"]
    assert {r.trigger for r in flowers} == {"bs"} and {r.poison_class for r in flowers} == {"rose"}
    assert sorted((r.strategy, r.source) for r in flowers) == [
        ("many-to-one", "all"),
        ("one-to-one", "daisy"),
        ("one-to-one", "dandelion"),
        ("one-to-one", "sunflower"),
        ("one-to-one", "tulip"),
    ]
    cifar = [r for r in e6 if r.dataset == "cifar10"]
    assert {r.trigger for r in cifar} == {"sin"} and {r.alpha for r in cifar} == {0.1}


def test_quickstart_is_reduced_but_builds_every_output(quickstart):
    validation.validate(quickstart)
    runs = ex.expand(quickstart)
    assert set(runs) == {"E1", "E2", "E3", "E4", "E5", "E6", "E7"}  # E7: analyses of E1/E2 runs (docs/detection.md)
    assert {run.run_id for run in runs["E7"]} <= {run.run_id for run in runs["E1"]}
    assert len(ex.union(runs)) == 27  # a 5-minute run on 2 cores (README)
    assert set(cv.outputs(quickstart)) == set(cv.DEFAULT_OUTPUTS)
    assert quickstart["table1"]["dataset"] == "synthetic" and quickstart["gallery"]["dataset"] == "synthetic"


# --------------------------------------------------------------------------- expansion rules


def test_defaults_are_the_paper_defaults():
    (run,) = ex.expand(tiny_config(poison_class="rose"))["E"]
    assert run == Run("flowers", "m", "bs", 1.0, "many-to-one", "rose", "all", 0.1, "none", 0)


def test_default_alpha_follows_the_trigger_and_duplicates_collapse():
    runs = ex.expand(tiny_config(trigger=["bs", "sin"], alpha=["default", 0.1], poison_class="rose"))["E"]
    assert [(r.trigger, r.alpha) for r in runs] == [("bs", 1.0), ("bs", 0.1), ("sin", 0.1)]


def test_per_dataset_mapping_and_seed_range():
    config = tiny_config(
        dataset=["flowers", "cifar10"],
        trigger={"flowers": "bs", "cifar10": "sin"},
        poison_class={"flowers": ["rose"], "cifar10": "truck"},
        seed={"range": [3, 5]},
    )
    runs = ex.expand(config)["E"]
    assert [(r.dataset, r.trigger, r.poison_class, r.seed) for r in runs] == [
        ("flowers", "bs", "rose", 3),
        ("flowers", "bs", "rose", 4),
        ("cifar10", "sin", "truck", 3),
        ("cifar10", "sin", "truck", 4),
    ]


def test_a_per_dataset_seed_range():
    config = tiny_config(
        dataset=["flowers", "cifar10"], poison_class="all", seed={"flowers": {"range": [1, 3]}, "cifar10": 0}
    )
    validation.validate(config)
    runs = ex.expand(config)["E"]
    assert sorted({(r.dataset, r.seed) for r in runs}) == [("cifar10", 0), ("flowers", 1), ("flowers", 2)]


def test_one_to_one_others_and_many_to_one_ignores_source():
    runs = ex.expand(
        tiny_config(dataset="cifar10", poison_class="truck", strategy=["many-to-one", "one-to-one"], source="others")
    )
    assert [(r.strategy, r.source) for r in runs["E"]] == [
        ("many-to-one", "all"),
        ("one-to-one", "airplane"),
        ("one-to-one", "automobile"),
    ]


def test_union_deduplicates_across_experiments_in_first_seen_order():
    a = Run("flowers", "m", "bs", 1.0, "many-to-one", "rose", "all", 0.1, "none", 0)
    b = Run("flowers", "m", "bs", 1.0, "many-to-one", "rose", "all", 0.1, "none", 1)
    c = Run("flowers", "m", "sin", 0.1, "many-to-one", "rose", "all", 0.1, "none", 0)
    assert ex.union({"E1": [a, b], "E2": [b, c, a]}) == [a, b, c]
    assert ex.union([[c], [c]]) == [c]


def test_shared_run_is_one_run_id_in_membership(paper):
    document = ex.membership(paper, "results/paper")
    assert len(document["runs"]) == 952
    shared = set(document["experiments"]["E1"]["runs"]) & set(document["experiments"]["E3"]["runs"])
    assert len(shared) == 5
    run_id = sorted(shared)[0]
    assert document["runs"][run_id] == {
        "summary": f"results/paper/runs/{run_id}/summary.parquet",
        "epochs": f"results/paper/runs/{run_id}/epochs.parquet",
    }
    assert document["experiments"]["E4"]["phases"] == ["poison", "clean"]
    assert document["outputs"]["table2"] == ["E1", "E2"]


def test_outputs_need_all_their_experiments(quickstart):
    config = copy.deepcopy(quickstart)
    del config["experiments"]["E2"], config["experiments"]["E5"]
    assert set(cv.outputs(config)) == {"table4", "table5", "fig4", "fig5", "fig6"}


def test_train_params_merge_order():
    config = tiny_config(poison_class="rose")
    config["train"] = {"lr": 1e-5, "batch_size": 32, "input_size": None}
    config["datasets"]["flowers"]["train"] = {"lr": 1e-4, "input_size": 224}
    config["models"]["m"]["train"] = {"lr": 1e-3}
    assert cv.train_params(config, "flowers", "m") == {"lr": 1e-3, "batch_size": 32, "input_size": 224}
    assert cv.model_spec(config, "m") == ("small_cnn", {"pretrained": False, "weights": None})


# --------------------------------------------------------------------------- run ids


def test_run_id_format_and_round_trip():
    run = Run("cifar10", "resnet50", "sin", 0.1, "one-to-one", "truck", "cat", 0.05, "snnl", 3)
    assert run.run_id == "cifar10/resnet50/sin/a0.1/one-to-one/ttruck/scat/r0.05/snnl/seed3"
    assert run.poison_id("shared") == "cifar10/sin/a0.1/one-to-one/ttruck/scat/r0.05/seed3"
    assert re.fullmatch(r"cifar10/sin/a0\.1/one-to-one/ttruck/scat/r0\.05/seed3-[0-9a-f]{16}", run.poison_id("per-run"))
    assert Run.from_run_id(run.run_id) == run
    assert Run(**run.params()) == run


def test_run_id_round_trip_over_the_paper_grid(paper):
    for run in ex.union(ex.expand(paper)):
        parsed = Run.from_run_id(run.run_id)
        assert parsed == run and parsed.run_id == run.run_id
    assert Run("f", "m", "bs", 1, "many-to-one", "x", "all", 0.5, "none", 0).run_id.split("/")[3] == "a1.0"


def test_from_run_id_rejects_other_paths():
    with pytest.raises(ValueError, match="does not match"):
        Run.from_run_id("cifar10/resnet50/sin/a0.1/sideways/ttruck/scat/r0.05/snnl/seed3")


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("experiment", "message"),
    [
        (
            {"trigger": ["bs", "square"]},
            r"^experiments\.E\.trigger\[1\]: 'square' is not declared in config triggers",
        ),
        (
            {"alpha": [0.1, 0.2, 0.5, 1.5]},
            r"^experiments\.E\.alpha\[3\]: alpha=1\.5 is outside the allowed range \[0, 1\]$",
        ),
        ({"poison_rate": [0.1, 0]}, r"^experiments\.E\.poison_rate\[1\]: 0 is outside \(0, 1\)$"),
        ({"poison_rate": 1.0}, r"^experiments\.E\.poison_rate: 1\.0 is outside \(0, 1\)$"),
        (
            {"poison_class": ["rose", "orchid"]},
            r"^experiments\.E\.poison_class\[1\]: 'orchid' is not a class of dataset flowers",
        ),
        (
            {"poison_class": "rose", "strategy": "one-to-one", "source": ["daisy", "rose"]},
            r"^experiments\.E\.source\[1\]: 'rose' is the poison class",
        ),
        (
            {"strategy": "one-to-one", "source": "lily"},
            r"^experiments\.E\.source: 'lily' is not a class of dataset flowers",
        ),
        ({"model": "resnet18"}, r"^experiments\.E\.model: 'resnet18' is not declared in config models"),
        (
            {"regularizer": ["none", "dropout"]},
            r"^experiments\.E\.regularizer\[1\]: 'dropout' is not declared in config regularizers",
        ),
        ({"dataset": ["flowers", "mnist"]}, r"^experiments\.E\.dataset\[1\]: 'mnist' is not a dataset declared"),
        (
            {"poison_class": {"flowers": ["rose"], "mnist": "x"}},
            r"^experiments\.E\.poison_class\.mnist: not a dataset of this experiment",
        ),
        ({"seed": [0, -1]}, r"^experiments\.E\.seed\[1\]: -1 is not a seed"),
        ({"poison_rates": 0.1}, r"^experiments\.E\.poison_rates: unknown key"),
        ({"phases": ["clean"]}, r"^experiments\.E\.phases: 'clean' needs retrain: true$"),
        # Per-dataset values escape the schema's checks of the factor's forms (were TypeError, KeyError).
        (
            {"model": {"flowers": [["m"]]}},
            r"^experiments\.E\.model\.flowers\[0\]: \['m'\] is not a single value; allowed: a value or a list",
        ),
        ({"poison_rate": {"flowers": {"low": 0.1}}}, r"^experiments\.E\.poison_rate\.flowers: \{'low': 0\.1\} is not"),
        ({"seed": {"flowers": {"start": 1}}}, r"^experiments\.E\.seed\.flowers: \{'start': 1\} is not a seed range"),
        ({"seed": {"flowers": {"range": "2"}}}, r"^experiments\.E\.seed\.flowers: \{'range': '2'\} is not a seed"),
        # An empty range would leave the experiment without runs.
        ({"seed": {"range": [3, 3]}}, r"^experiments\.E\.seed: \{'range': \[3, 3\]\} is not a seed range; allowed:"),
    ],
    ids=[
        "trigger-undeclared",
        "alpha-above-1",
        "poison_rate-0",
        "poison_rate-1",
        "poison_class-unknown",
        "source-is-poison-class",
        "source-unknown",
        "model-undeclared",
        "regularizer-undeclared",
        "dataset-undeclared",
        "mapping-of-another-dataset",
        "seed-negative",
        "unknown-key",
        "clean-phase-without-retrain",
        "per-dataset-nested-list",
        "per-dataset-mapping-value",
        "per-dataset-seed-without-range",
        "per-dataset-seed-range-text",
        "seed-range-empty",
    ],
)
def test_validation_names_the_config_key(experiment, message):
    with pytest.raises(ValueError, match=message):
        validation.validate(tiny_config(**experiment))


def test_validation_of_per_dataset_alpha_path():
    config = tiny_config(
        dataset=["flowers", "cifar10"], alpha={"flowers": [0.1], "cifar10": [0.2, 2.0]}, poison_class="all"
    )
    with pytest.raises(
        ValueError, match=r"^experiments\.E\.alpha\.cifar10\[1\]: alpha=2\.0 is outside the allowed range \[0, 1\]$"
    ):
        validation.validate(config)


def test_validation_of_sections():
    config = tiny_config()
    config["datasets"]["flowers"]["classes"] = ["daisy", "daisy"]
    with pytest.raises(ValueError, match=r"^datasets\.flowers\.classes: 'daisy' appears twice"):
        validation.validate(config)
    config = tiny_config()
    config["datasets"]["flowers"]["classes"] = ["a/b", "c"]
    with pytest.raises(ValueError, match=r"^datasets\.flowers\.classes\[0\]: 'a/b' is not a valid class name"):
        validation.validate(config)
    config = tiny_config()
    config["datasets"]["flowers"]["classes"] = ["0", "1"]
    with pytest.raises(ValueError, match=r"^datasets\.flowers\.classes\[0\]: '0' is not a valid class name"):
        validation.validate(config)
    config = tiny_config()
    config["triggers"]["sin"]["alpha"] = 1.5
    with pytest.raises(ValueError, match=r"^triggers\.sin\.alpha: alpha=1\.5 is outside the allowed range \[0, 1\]$"):
        validation.validate(config)
    config = tiny_config()
    config["table1"] = {"dataset": "mnist"}
    with pytest.raises(ValueError, match=r"^table1\.dataset: 'mnist' is not declared"):
        validation.validate(config)


def test_both_configs_validate(paper, quickstart):
    validation.validate(paper)
    validation.validate(quickstart)


def test_registry_check_names_the_key(quickstart):
    pytest.importorskip("torch")
    validation.validate(quickstart, check_registries=True)
    quickstart["models"]["small_cnn"]["arch"] = "tiny_cnn"
    with pytest.raises(
        ValueError, match=r"^models\.small_cnn\.arch: 'tiny_cnn' is not registered in backdoor_eval\.models\.MODELS"
    ):
        validation.validate(quickstart, check_registries=True)


def test_train_params_per_dataset_model_override_comes_last():
    config = tiny_config()
    config["train"] = {"lr": 1e-3, "input_size": None}
    config["datasets"]["cifar10"]["train"] = {"batch_size": 64}
    config["models"]["m"]["train"] = {"lr": 1e-4}
    config["models"]["m"]["train_per_dataset"] = {"cifar10": {"input_size": 331}}
    assert cv.train_params(config, "cifar10", "m") == {"lr": 1e-4, "input_size": 331, "batch_size": 64}
    assert cv.train_params(config, "flowers", "m") == {"lr": 1e-4, "input_size": None}
    config["models"]["m"]["train_per_dataset"] = {"mnist": {"input_size": 28}}
    with pytest.raises(ValueError, match=r"^models\.m\.train_per_dataset\.mnist: not a dataset declared"):
        validation.validate(config)


def test_paper_config_trains_the_nasnets_on_cifar10_at_their_native_sizes(paper):
    assert cv.train_params(paper, "cifar10", "nasnet_large")["input_size"] == 331
    assert cv.train_params(paper, "cifar10", "nasnet_mobile")["input_size"] == 224
    assert cv.train_params(paper, "cifar10", "resnet50")["input_size"] is None  # native 32 px
    for model in ("resnet50", "nasnet_large", "nasnet_mobile"):
        assert cv.train_params(paper, "flowers", model)["input_size"] is None  # the store is 224 px


def test_registry_check_names_the_key_of_a_bad_training_setting(quickstart):
    pytest.importorskip("torch")
    quickstart["train"]["optimizer"] = "adamx"
    with pytest.raises(ValueError, match=r"^train\.optimizer: unknown optimizer 'adamx'; registered optimizers: adam"):
        validation.validate(quickstart, check_registries=True)
    quickstart["train"]["optimizer"] = "adam"
    quickstart["models"]["small_cnn"]["train_per_dataset"] = {"synthetic": {"batch_size": 0}}
    with pytest.raises(ValueError, match=r"^models\.small_cnn\.train_per_dataset\.synthetic\.batch_size: "):
        validation.validate(quickstart, check_registries=True)


def test_a_trigger_entry_may_run_a_registered_trigger_under_other_settings(quickstart):
    quickstart["triggers"]["lv_scaled"] = {"kind": "lv", "params": {"reading": "scaled"}}
    quickstart["experiments"]["E4"]["trigger"] = ["sin", "lv", "lv_scaled"]
    validation.validate(quickstart, check_registries=pytest.importorskip("torch") is not None)
    assert cv.trigger_kind(quickstart, "lv_scaled") == "lv" and cv.trigger_kind(quickstart, "sin") == "sin"
    assert cv.needs_fit(quickstart, "lv_scaled") and not cv.needs_fit(quickstart, "sin")
    assert cv.trigger_default_alpha(quickstart, "lv_scaled") == 0.5  # the lv class's own default
    assert cv.trigger_params(quickstart, "lv_scaled") == {"reading": "scaled"}
    quickstart["triggers"]["lv_scaled"]["kind"] = "lvx"
    with pytest.raises(ValueError, match=r"^triggers\.lv_scaled\.kind: 'lvx' is not registered"):
        validation.validate(quickstart, check_registries=True)


def test_a_run_that_would_poison_no_image_is_an_error_naming_the_experiment(quickstart):
    config = copy.deepcopy(quickstart)
    dataset = config["experiments"]["E5"]["dataset"]
    classes = config["datasets"][dataset]["classes"]
    # 100 images per class: 76 in the poison-set; 60 or 61 of them (80%, apportioned) poison-train.
    validation.check_poison_counts(config, {dataset: [100] * len(classes)})  # rates 0.1-0.5 all poison some
    config["experiments"]["E5"]["poison_rate"] = [0.1, 0.016]
    with pytest.raises(ValueError) as info:
        validation.check_poison_counts(config, {dataset: [100] * len(classes)})
    message = str(info.value)
    assert message.startswith(f"experiments.E5.poison_rate: dataset {dataset}: poison_rate=0.016 x 60 ")
    assert "rounds down to 0 poisoned images; allowed: a poison rate of at least 0.01667" in message
    validation.check_poison_counts(config, {})  # sizes unknown before ingest: left to the poison job


def test_poison_count_check_names_a_class_list_that_does_not_match_the_dataset(quickstart):
    dataset = quickstart["experiments"]["E5"]["dataset"]
    with pytest.raises(ValueError, match=rf"datasets\.{dataset}\.classes: \d+ classes declared, but the dataset has 3"):
        validation.check_poison_counts(quickstart, {dataset: [100, 100, 100]})


def test_outputs_take_as_many_experiments_as_they_can_use(quickstart):
    config = copy.deepcopy(quickstart)
    config["outputs"]["table2"] = "E1+E2+E4"  # each fills the halves it has phases for
    validation.validate(config)
    config["outputs"]["fig4"] = "E3+E1"
    with pytest.raises(ValueError, match=r"^outputs\.fig4: 'E3\+E1'; allowed: one experiment name \(e\.g\. 'E3'\)"):
        validation.validate(config)


# --------------------------------------------------------------------------- the optimizer factor


def optimizer_config(quickstart: dict, optimizers: list) -> dict:
    config = copy.deepcopy(quickstart)
    config["optimizers"] = {"sgd": {"lr": 0.05, "momentum": 0.9}, "adamw": {"weight_decay": 0.01}}
    config["experiments"] = {"E8": {**config["experiments"]["E1"], "optimizer": optimizers, "retrain": True}}
    return config


def test_optimizer_values_name_blocks_of_training_settings(quickstart):
    config = optimizer_config(quickstart, ["default", "sgd", "adamw"])
    validation.validate(config)
    runs = ex.expand(config)["E8"]
    assert len(runs) == 3 * len(ex.expand(quickstart)["E1"])
    by_optimizer = {run.optimizer: run for run in runs if run.trigger == "bs" and run.poison_class == "class0"}
    default, sgd, adamw = by_optimizer["default"], by_optimizer["sgd"], by_optimizer["adamw"]
    # The default optimizer's runs are E1's, path and all; the others add their segment.
    assert default in ex.expand(quickstart)["E1"]
    assert sgd.run_id == default.run_id + "/opt-sgd" and adamw.run_id == default.run_id + "/opt-adamw"
    assert cv.run_train_params(config, default) == config["train"]
    assert cv.run_train_params(config, sgd) == {**config["train"], "optimizer": "sgd", "lr": 0.05, "momentum": 0.9}
    assert cv.run_train_params(config, adamw) == {**config["train"], "optimizer": "adamw", "weight_decay": 0.01}
    # Under split: per-run each optimizer's runs draw their own split; under shared they share it.
    assert sgd.split("per-run") != default.split("per-run")
    assert sgd.poison_id("shared") == default.poison_id("shared")


def test_an_undeclared_optimizer_names_the_key(quickstart):
    config = optimizer_config(quickstart, ["sgd", "lion"])
    with pytest.raises(
        ValueError, match=r"^experiments\.E8\.optimizer\[1\]: 'lion' is not declared in config optimizers"
    ):
        validation.validate(config)


def test_registry_check_names_the_optimizer_block_of_a_bad_setting(quickstart):
    pytest.importorskip("torch")
    config = optimizer_config(quickstart, ["sgd"])
    validation.validate(config, check_registries=True)
    config["optimizers"]["sgd"]["lr"] = 0
    with pytest.raises(ValueError, match=r"^optimizers\.sgd\.lr: "):
        validation.validate(config, check_registries=True)
    config["optimizers"]["sgd"] = {"optimizer": "sgdx"}
    with pytest.raises(ValueError, match=r"^optimizers\.sgd\.optimizer: unknown optimizer 'sgdx'"):
        validation.validate(config, check_registries=True)


# --------------------------------------------------------------------------- every registry entry's parameters


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("models.small_cnn.params.evil", 1, r"^models\.small_cnn\.params\.evil: .*'evil'"),
        ("models.small_cnn.params.width", 0, r"^models\.small_cnn\.params\.width: width=0 is invalid"),
        ("triggers.bs.params", {"radius": 3}, r"^triggers\.bs\.params\.radius: trigger 'bs' has no parameter 'radius'"),
        ("triggers.bs.params", {"size_px": -2}, r"^triggers\.bs\.params\.size_px: size_px=-2"),
        ("triggers.lv.params", {"radius": 3}, r"^triggers\.lv\.params\.radius: trigger 'lv' has no parameter"),
        ("regularizers.contrastive.margin", -1, r"^regularizers\.contrastive\.margin: "),
        ("regularizers.snnl.radius", 1, r"^regularizers\.snnl\.radius: regularizer 'snnl' has no parameter 'radius'"),
        ("datasets.synthetic.params.colour", 1, r"^datasets\.synthetic\.params\.colour: dataset 'synthetic' has no"),
        ("datasets.synthetic.params.size", 2, r"^datasets\.synthetic\.params\.size: size 2 is not allowed"),
        ("datasets.synthetic.params.size", 20000, r"^datasets\.synthetic\.params: making this dataset needs about"),
    ],
)
def test_registry_check_names_every_bad_entry_parameter(quickstart, path, value, message):
    pytest.importorskip("torch")
    *parents, last = path.split(".")
    node = quickstart
    for key in parents:
        node = node.setdefault(key, {})
    node[last] = value
    with pytest.raises(ValueError, match=message):
        validation.validate(quickstart, check_registries=True)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("lr", 0),
        ("retrain_lr", 0),
        ("weight_decay", -1),
        ("momentum", -0.5),
        ("batch_size", 0),
        ("patience", -1),
        ("input_size", 4),
        ("augment", "rotate"),
    ],
)
def test_the_train_blocks_values_are_checked_by_train_config_alone(quickstart, key, value):
    pytest.importorskip("torch")
    from backdoor_eval.schema import load_schema

    # The schema gives the train keys' types only: the rule for each value is TrainConfig's.
    train = load_schema()["$defs"]["train"]["properties"]
    assert not [k for k, spec in train.items() if {"minimum", "exclusiveMinimum", "enum"} & set(spec)]
    quickstart["train"][key] = value
    from backdoor_eval.schema import validate_schema

    validate_schema(copy.deepcopy(quickstart))  # the schema accepts the value: TrainConfig names it
    with pytest.raises(ValueError, match=rf"^train\.{key}: "):
        validation.validate(quickstart, check_registries=True)


# --------------------------------------------------------------------------- fitted triggers


def test_a_fitted_triggers_fit_parameters_sit_under_its_params(quickstart):
    assert quickstart["triggers"]["lv"]["params"] == {"reading": "literal", "variance_fraction": 0.005}
    assert cv.trigger_params(quickstart, "lv") == {"reading": "literal"}  # what the trigger is built with
    assert cv.fit_params(quickstart, "lv") == {"variance_fraction": 0.005}
    assert cv.fit_options(quickstart, "lv") == ["--variance-fraction", "0.005"]
    # Every entry of the kind shares the split's one fit: a second entry may repeat a value, not change it.
    quickstart["triggers"]["lv_scaled"] = {"kind": "lv", "params": {"reading": "scaled", "save_components": False}}
    assert cv.fit_params(quickstart, "lv") == {"variance_fraction": 0.005, "save_components": False}
    quickstart["triggers"]["lv_scaled"]["params"]["variance_fraction"] = 0.01
    with pytest.raises(ValueError, match=r"^triggers\.lv_scaled\.params\.variance_fraction: 0\.01 differs from "
                       r"triggers\.lv\.params\.variance_fraction: 0\.005; entries of kind lv share one fit"):  # fmt: skip
        cv.fit_params(quickstart, "lv")


def test_a_fit_parameter_at_its_old_place_names_the_new_one(quickstart):
    quickstart["triggers"]["lv"]["save_components"] = False
    with pytest.raises(ValueError, match=r"^triggers\.lv\.save_components: a parameter of trigger 'lv' goes under "
                       r"params; write triggers\.lv\.params\.save_components$"):  # fmt: skip
        prepare_config(quickstart, check_registries=False)


def test_a_bad_fit_parameter_fails_the_check_naming_the_key(quickstart):
    pytest.importorskip("torch")
    quickstart["triggers"]["lv"]["params"]["variance_fraction"] = 1.5
    with pytest.raises(ValueError, match=r"^triggers\.lv\.params\.variance_fraction: variance_fraction=1\.5; "):
        validation.validate(quickstart, check_registries=True)
    quickstart["triggers"]["lv"]["params"] = {"radius": 3}
    with pytest.raises(ValueError, match=r"^triggers\.lv\.params\.radius: trigger 'lv' has no parameter 'radius'; "
                       r"allowed: reading, fit_sha256, variance_fraction, save_components$"):  # fmt: skip
        validation.validate(quickstart, check_registries=True)


def test_a_new_fitted_trigger_needs_a_fit_in_the_config_with_no_other_edit(quickstart, fitted_toy):
    quickstart["triggers"]["toy"] = {"kind": fitted_toy.NAME, "params": {"shade": 0.5}}
    quickstart["experiments"]["E1"]["trigger"] = ["bs", "toy"]
    validation.validate(quickstart, check_registries=True)
    assert cv.needs_fit(quickstart, "toy") and not cv.needs_fit(quickstart, "bs")
    assert cv.trigger_params(quickstart, "toy") == {} and cv.fit_options(quickstart, fitted_toy.NAME) == [
        "--shade",
        "0.5",
    ]
    toy_runs = {run for run in ex.union(ex.expand(quickstart)) if run.trigger == "toy"}
    lv_splits = {cv.split_of(quickstart, run) for run in ex.union(ex.expand(quickstart)) if run.trigger == "lv"}
    assert ex.counts(quickstart)["trigger_fits"] == len({cv.split_of(quickstart, r) for r in toy_runs}) + len(lv_splits)
    quickstart["triggers"]["toy"]["params"]["shade"] = 2
    with pytest.raises(ValueError, match=r"^triggers\.toy\.params\.shade: shade=2; allowed: a number in \[0, 1\]$"):
        validation.validate(quickstart, check_registries=True)

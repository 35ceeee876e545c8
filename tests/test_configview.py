"""The typed config view: it builds for every shipped config, answers as the raw-dict readers it replaced
(tests/configview_reference.py) for every dataset, model, trigger, regularizer, experiment and run, and
cannot be changed."""

from __future__ import annotations

import copy
import dataclasses
import os
from pathlib import Path

import pytest

import configview_reference as old
from backdoor_eval import config as cfg
from backdoor_eval import configview as cv
from backdoor_eval import experiments as ex
from backdoor_eval import offline, pretrain
from backdoor_eval.factors import FACTORS
from backdoor_eval.names import NO_REGULARIZER

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted(path.name for path in (REPO / "config").glob("*.yaml"))


def old_model_weights(config, model):
    """``backdoor_eval.offline.model_weights`` as it read the raw mapping."""
    spec = config["models"][model] or {}
    if not spec.get("pretrained"):
        return None, None
    arch, weights = str(spec.get("arch") or model), spec.get("weights")
    if weights is None:
        return offline.weights_file_name(arch), offline.WeightsFetch(arch)
    if offline.is_url(weights):
        return offline.weights_file_name(arch, str(weights)), offline.WeightsFetch(arch, str(weights))
    return os.path.expanduser(str(weights)), None


@pytest.fixture(scope="module", params=CONFIGS)
def shipped(request):
    """(completed config, its view) of one config under config/."""
    config = cfg.load_config(REPO / "config" / request.param, check_registries=False)
    return config, cv.ConfigView.from_config(config)


def test_view_builds_with_the_top_level_settings(shipped):
    config, view = shipped
    assert (view.name, view.device, view.split) == (config["name"], config["device"], config["split"])
    assert (view.keep_models, view.gpu_lock_dir, view.jobs_per_gpu) == (
        config["keep_models"],
        config["gpu_lock_dir"],
        config["jobs_per_gpu"],
    )
    assert cv.thaw(view.train) == config["train"]
    assert list(view.datasets) == list(config["datasets"])
    assert list(view.experiments) == list(config["experiments"])
    assert cv.view(view) is view


def test_datasets_and_models_answer_as_before(shipped):
    config, view = shipped
    for name, spec in config["datasets"].items():
        assert view.dataset_classes(name) == old.dataset_classes(config, name)
        assert (view.datasets[name].kind, cv.thaw(view.datasets[name].params)) == (spec["kind"], spec["params"])
    for name in config["models"]:
        assert view.model_spec(name) == old.model_spec(config, name)
        assert view.model(name).init == config["models"][name].get("init")
        for dataset in config["datasets"]:
            assert view.train_layers(dataset, name) == old.train_layers(config, dataset, name)
            assert view.train_params(dataset, name) == old.train_params(config, dataset, name)
    for name in config.get("pretraining") or {}:
        spec = config["pretraining"][name]
        entry = view.pretraining[name]
        assert (entry.dataset, entry.arch, entry.seed, entry.holdout) == (
            spec["dataset"],
            spec["arch"],
            spec["seed"],
            spec["holdout"],
        )
        assert (cv.thaw(entry.params), cv.thaw(entry.train)) == (spec["params"], spec["train"])
        assert pretrain.pretraining_settings(view, name) == old.pretraining_settings(config, name)
    for name in config["models"]:
        assert offline.model_weights(view, name) == old_model_weights(config, name)


def test_triggers_and_regularizers_answer_as_before(shipped):
    config, view = shipped
    assert view.trigger_names == old.trigger_names(config)
    for name in view.trigger_names:
        trigger = view.trigger(name)
        assert trigger.kind == old.trigger_kind(config, name)
        assert trigger.needs_fit == old.needs_fit(config, name)
        assert trigger.default_alpha == old.trigger_default_alpha(config, name)
        assert trigger.trigger_params() == old.trigger_params(config, name)
        if trigger.needs_fit:
            assert view.fit_params(trigger.kind) == old.fit_params(config, trigger.kind)
            assert view.fit_options(trigger.kind) == old.fit_options(config, trigger.kind)
    assert view.regularizer_names == old.regularizer_names(config)
    for name in view.regularizer_names:
        assert view.regularizer_params(name) == old.regularizer_params(config, name)


def test_experiments_runs_and_outputs_answer_as_before(shipped):
    config, view = shipped
    assert view.experiment_phases == old.experiment_phases(config)
    assert view.outputs == old.outputs(config)
    assert view.split == old.split_policy(config)
    for section in ("datasets", "models", "triggers", "regularizers", "optimizers"):
        assert view.declared_names(section) == old.declared_names(config, section)
        assert view.names_of(section) == old.names_of(config, section)
    expanded = ex.expand(view)
    assert expanded == ex.expand(config)
    for run in ex.union(expanded):
        assert view.split_of(run) == old.split_of(config, run)
        assert view.poison_id(run) == run.poison_id(old.split_policy(config))
        assert view.run_train_params(run) == old.run_train_params(config, run)
        assert view.train_layers(run.dataset, run.model, run.values()) == old.train_layers(
            config, run.dataset, run.model, run.values()
        )


def test_module_functions_are_the_views_answers(shipped):
    config, view = shipped
    run = ex.union(ex.expand(view))[0]
    assert cv.dataset_classes(config, run.dataset) == view.dataset_classes(run.dataset)
    assert cv.model_spec(config, run.model) == view.model_spec(run.model)
    assert cv.trigger_kind(config, run.trigger) == view.trigger(run.trigger).kind
    assert cv.run_train_params(config, run) == view.run_train_params(run)
    assert cv.split_of(config, run) == view.split_of(run)
    assert cv.outputs(config) == view.outputs


def test_view_is_immutable(shipped):
    _, view = shipped
    with pytest.raises(dataclasses.FrozenInstanceError):
        view.name = "other"  # type: ignore[misc]
    dataset = next(iter(view.datasets.values()))
    with pytest.raises(dataclasses.FrozenInstanceError):
        dataset.classes = ("a", "b")  # type: ignore[misc]
    with pytest.raises(TypeError):
        view.datasets["new"] = dataset  # type: ignore[index]
    with pytest.raises(TypeError):
        view.train["lr"] = 1.0  # type: ignore[index]
    with pytest.raises(TypeError):
        view.sections["experiments"]["new"] = {}  # type: ignore[index]
    experiment = next(iter(view.experiments.values()))
    assert isinstance(experiment.grid["trigger"], (str, tuple))  # lists are tuples
    with pytest.raises(TypeError):
        experiment.grid["trigger"] = "bs"  # type: ignore[index]


def test_answers_are_the_callers_to_change(shipped):
    _, view = shipped
    model = next(iter(view.models))
    _, params = view.model_spec(model)
    params["weights"] = "elsewhere.safetensors"
    assert view.model_spec(model)[1]["weights"] != "elsewhere.safetensors"
    dataset = next(iter(view.datasets))
    merged = view.train_params(dataset, model)
    merged["lr"] = -1.0
    assert view.train_params(dataset, model).get("lr") != -1.0


def test_view_does_not_follow_the_mapping():
    config = cfg.load_config(REPO / "config" / "quickstart.yaml", check_registries=False)
    view = cv.view(config)
    before = copy.deepcopy(cv.thaw(view.sections))
    config["datasets"]["synthetic"]["classes"].append("extra")
    config["models"]["small_cnn"] = {"arch": "resnet50"}
    assert cv.thaw(view.sections) == before
    assert "extra" not in view.dataset_classes("synthetic")
    assert view.model("small_cnn").arch == "small_cnn"


def test_partial_configs_read_as_before():
    """The checks read configs before they are whole: absent sections and null entries read as empty."""
    partial = {"train": {"lr": 0.1}, "models": {"m": None}, "triggers": {"lv_scaled": {"kind": "lv"}}}
    view = cv.view(partial)
    assert view.train_params("d", "m") == old.train_params(partial, "d", "m") == {"lr": 0.1}
    assert view.model_spec("m") == old.model_spec(partial, "m")
    assert view.trigger("lv_scaled").kind == "lv" and view.trigger("bs").kind == "bs"
    assert view.experiment_phases == {} and view.regularizer_names == [NO_REGULARIZER]
    factors = {factor.name: factor.default for factor in FACTORS}
    assert view.train_layers("d", "m", factors) == old.train_layers(partial, "d", "m", factors)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda view: view.dataset_classes("nope"), "dataset 'nope' is not declared in config datasets"),
        (lambda view: view.model("nope"), "model 'nope' is not declared in config models"),
        (lambda view: view.regularizer_params("nope"), "regularizer 'nope' is not declared in config regularizers"),
        (lambda view: view.trigger("nope").default_alpha, "triggers.nope: 'nope' is not registered"),
    ],
)
def test_undeclared_names_are_errors_naming_them(call, message):
    config = cfg.load_config(REPO / "config" / "quickstart.yaml", check_registries=False)
    with pytest.raises(ValueError, match=message):
        call(cv.view(config))

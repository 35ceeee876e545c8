"""The config loader: schema defaults, messages that name the key, the schema as documentation."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from backdoor_eval import config as cfg
from backdoor_eval import configview as cv
from backdoor_eval import schema

REPO = Path(__file__).resolve().parents[1]


def raw(name: str) -> dict:
    return yaml.safe_load((REPO / "config" / name).read_text())


@pytest.mark.parametrize("name", sorted(path.name for path in (REPO / "config").glob("*.yaml")))
def test_shipped_configs_load_with_defaults_filled(name):
    config = cfg.load_config(REPO / "config" / name)
    experiment, first = next(iter(config["experiments"].items()))
    assert first["strategy"] == "many-to-one"  # defaults filled in
    assert first["optimizer"] == raw(name)["experiments"][experiment].get("optimizer", "default")
    assert config["keep_models"] is False
    assert set(config["resources"]) == {"train", "retrain", "pretrain"}
    # Per-dataset overrides of `train` get no defaults (they would mask `train:`).
    dataset, model = next(iter(config["datasets"])), next(iter(config["models"]))
    assert cv.train_params(config, dataset, model)["lr"] == config["train"]["lr"]


def test_the_workflow_schema_is_the_package_schema():
    linked = REPO / "workflow" / "schemas" / "config.schema.yaml"
    assert yaml.safe_load(linked.read_text()) == schema.load_schema()


def test_a_partial_resources_block_keeps_the_other_defaults():
    config = raw("quickstart.yaml")
    config["resources"] = {"train": {"threads": 4}}
    cfg.prepare_config(config, check_registries=False)
    assert config["resources"]["train"] == {"threads": 4, "mem_mb": 16000, "runtime": 720}
    assert config["resources"]["retrain"] == {"threads": 1, "mem_mb": 16000, "runtime": 120}


@pytest.mark.parametrize("block", ["table1", "gallery"])
@pytest.mark.parametrize("value", ["omitted", None])
def test_optional_blocks_may_be_omitted_or_empty(block, value):
    config = raw("quickstart.yaml")
    if value == "omitted":
        config.pop(block, None)
    else:
        config[block] = value
    cfg.prepare_config(config, check_registries=False)
    assert config[block] is None


def test_the_triggers_block_defaults_to_every_registered_trigger_with_its_own_alpha():
    from backdoor_eval.triggers import TRIGGERS

    config = raw("quickstart.yaml")
    config.pop("triggers")
    cfg.prepare_config(config, check_registries=False)
    assert cv.trigger_names(config) == TRIGGERS.names()
    assert cv.trigger_default_alpha(config, "sin") == TRIGGERS.get("sin").default_alpha == 0.1


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda c: c["experiments"]["E1"].update(retrain="yes"),
            r"^experiments\.E1\.retrain: 'yes' is not valid; allowed: boolean$",
        ),
        (lambda c: c["train"].update(optimiser="adam"), r"^train\.optimiser: unknown key; allowed: .*optimizer"),
        (
            lambda c: c["train"].update(lr="3e-3"),
            r"^train\.lr: '3e-3' is not valid; .*write it with a decimal point, e\.g\. 3\.0e-3",
        ),
        (
            lambda c: c["experiments"]["E1"].update(trigger=[]),
            r"^experiments\.E1\.trigger: \[\] is not valid; allowed: trigger name\(s\) declared in `triggers`",
        ),
        (lambda c: c.update(device="gpu"), r"^device: 'gpu' is not valid; allowed: auto, cpu, cuda$"),
        (lambda c: c.pop("datasets"), r"^datasets: required key is missing$"),
        (
            lambda c: c["resources"].update(train={"threads": 0}),
            r"^resources\.train\.threads: 0 is not valid; less than the minimum of 1$",
        ),
        (
            lambda c: c["outputs"].update(table9="E1"),
            r"^outputs\.table9: unknown key; allowed: fig4, fig5, fig6, fig7, fig_optimizer, retraining_budget, table2, "
            r"table3, table4, table5, table_optimizer$",
        ),
        (
            lambda c: c.update(name="my run"),
            r"^name: 'my run' is not valid; allowed: letters, digits, _ \. \+ - \(starting with a letter",
        ),
        (lambda c: c.update(name="../x"), r"^name: '\.\./x' is not valid; allowed: letters, digits"),
        (
            lambda c: c["gallery"].update(seed=-1),
            r"^gallery\.seed: -1 is not valid; less than the minimum of 0$",
        ),
        (
            lambda c: c.update(spilt="shared"),
            r"^spilt: unknown key; allowed: analyses, datasets, device, experiments, ",
        ),
    ],
    ids=[
        "retrain-not-boolean",
        "train-unknown-key",
        "lr-as-text",
        "empty-trigger-list",
        "device-gpu",
        "datasets-missing",
        "threads-zero",
        "outputs-unknown-name",
        "name-with-space",
        "name-with-path",
        "gallery-seed-negative",
        "top-level-unknown-key",
    ],
)
def test_schema_errors_name_the_key_and_what_is_allowed(change, message):
    config = raw("quickstart.yaml")
    change(config)
    with pytest.raises(ValueError, match=message):
        cfg.prepare_config(config, check_registries=False)


def test_yaml_syntax_error_names_the_file_and_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\ndatasets:\n  a: [1, 2\n")
    with pytest.raises(ValueError, match=r"bad\.yaml, line \d+, column \d+: YAML syntax error"):
        cfg.load_config(path)


def test_a_config_that_is_not_a_mapping_is_named(tmp_path):
    path = tmp_path / "scalar.yaml"
    path.write_text("just a string\n")
    with pytest.raises(ValueError, match=r"^config '.*scalar\.yaml' is not a mapping of keys; allowed: a YAML mapping"):
        cfg.load_config(path)


def test_a_missing_config_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        cfg.load_config(tmp_path / "nope.yaml")
    for not_a_file in (tmp_path, "/dev/null"):
        with pytest.raises(ValueError, match="is not a regular file \\(a folder or a device\\); allowed: a YAML file"):
            cfg.load_config(not_a_file)


def test_schema_documents_every_key():
    document = schema.load_schema()

    def walk(node, path):
        if isinstance(node, dict):
            for key, sub in (node.get("properties") or {}).items():
                assert "description" in sub or "$ref" in sub, f"{path}.{key} has no description"
                walk(sub, f"{path}.{key}")
            for key in ("additionalProperties", "items"):
                if isinstance(node.get(key), dict):
                    walk(node[key], f"{path}.{key}")
            for key in ("oneOf", "allOf"):
                for i, sub in enumerate(node.get(key) or []):
                    walk(sub, f"{path}.{key}[{i}]")

    walk(document, "config")
    for name, definition in document["$defs"].items():
        walk(definition, f"$defs.{name}")


def test_schema_train_keys_are_the_engine_settings_and_carry_no_defaults():
    pytest.importorskip("torch")
    from backdoor_eval.train import TrainConfig

    train = schema.load_schema()["$defs"]["train"]["properties"]
    assert set(train) == {field.name for field in dataclasses.fields(TrainConfig)}
    # The engine's dataclass is the one place the training defaults are written.
    assert not [key for key, spec in train.items() if "default" in spec]


def test_schema_default_reads_nested_and_defs_nodes():
    assert schema.schema_default("experiment", "strategy") == "many-to-one"
    assert schema.schema_default("outputs")["table2"] == "E1+E2"
    assert cv.DEFAULT_OUTPUTS["table2"] == ["E1", "E2"]
    with pytest.raises(KeyError, match="datasets"):
        schema.schema_default("datasets")


def test_show_config_prints_the_config_with_its_defaults(capsys):
    from backdoor_eval.cli import main

    assert main(["show-config", "--config", str(REPO / "config" / "quickstart.yaml")]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["experiments"]["E1"]["strategy"] == "many-to-one"  # filled from the schema
    assert shown["resources"]["train"]["threads"] == 1 and shown["split"] == "shared"
    assert shown == cfg.load_config(REPO / "config" / "quickstart.yaml")


def test_a_completed_config_loads_again(tmp_path, capsys):
    """show-config of a config without `outputs:` and some paper experiments loads again (it used to
    print every default output, which, written, must name experiments that exist)."""
    from backdoor_eval.cli import main

    config = raw("quickstart.yaml")
    del config["outputs"], config["experiments"]["E3"], config["experiments"]["E4"]
    path = tmp_path / "partial.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["show-config", "--config", str(path)]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["outputs"] == {"table2": "E1+E2", "table3": "E1+E2", "table4": "E6", "table5": "E6", "fig7": "E5"}
    path.write_text(yaml.safe_dump(shown))
    assert cfg.load_config(path) == shown


def test_keys_of_other_types_are_named():
    """YAML reads `1:`, `null:` and `true:` as keys that do not sort with text (this was a TypeError)."""
    config = raw("quickstart.yaml")
    config["resources"].update({1: {}, "zz": {}})
    with pytest.raises(ValueError, match=r"^resources\.1: unknown key; allowed: pretrain, retrain, train$"):
        cfg.prepare_config(config, check_registries=False)
    config = raw("quickstart.yaml")
    config["models"][None] = {"arch": 5}
    config["models"]["small_cnn"]["arch"] = 5
    with pytest.raises(ValueError, match=r"^models: None is not valid; allowed: string$"):
        cfg.prepare_config(config, check_registries=False)


def test_show_config_names_a_bad_key_in_one_line(tmp_path, capsys):
    from backdoor_eval.cli import main

    config = raw("quickstart.yaml")
    config["train"]["lr"] = "3e-3"
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["show-config", "--config", str(path)]) == 2
    assert "train.lr: '3e-3' is not valid" in capsys.readouterr().err


def test_written_outputs_must_name_defined_experiments_but_defaults_make_what_exists():
    config = raw("quickstart.yaml")
    config["outputs"]["fig6"] = "E9"
    with pytest.raises(
        ValueError, match=r"^outputs\.fig6: experiment 'E9' is not defined in experiments; defined: E1, E2"
    ):
        cfg.prepare_config(config, check_registries=False)
    config = raw("quickstart.yaml")
    del config["outputs"]
    for name in ("E3", "E4"):
        del config["experiments"][name]
    cfg.prepare_config(config, check_registries=False)  # the schema's default outputs: fig4-6 are left out
    assert set(cv.outputs(config)) == {"table2", "table3", "table4", "table5", "fig7"}

"""The run factors, declared once: the run identity, paths, wildcards, row types and schema derive from them.

The published runs pin the identity: every row of the committed real-data
``runs.parquet`` files must get its ``run_id`` back from its factors, and a
sample of run, split and poison ids computed before the factors were
declared in one place must come out unchanged.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest

from backdoor_eval import factors
from backdoor_eval.factors import (
    FACTOR_NAMES,
    FACTORS,
    POISON_ID_TEMPLATE,
    RUN_ID_PATTERN,
    RUN_ID_TEMPLATE,
    WILDCARD_CONSTRAINTS,
    Run,
    typed_row,
)
from backdoor_eval.schema import load_schema

REPO = Path(__file__).resolve().parents[1]
PUBLISHED = ("real-cifar10", "real-flowers")

# (run id, its split under split: per-run, its poisoned set's id) as the code computed them before
# the factors were declared once (the paper grid, the quickstart, and runs of the published real data).
PINNED = [
    (
        "cifar10/resnet50/bs/a1.0/many-to-one/tairplane/sall/r0.1/none/seed0",
        "seed0-306d2768a3822264",
        "cifar10/bs/a1.0/many-to-one/tairplane/sall/r0.1/seed0-306d2768a3822264",
    ),
    (
        "flowers/resnet50/sin/a0.3/many-to-one/trose/sall/r0.05/none/seed0",
        "seed0-8cda47ab444663ff",
        "flowers/sin/a0.3/many-to-one/trose/sall/r0.05/seed0-8cda47ab444663ff",
    ),
    (
        "synthetic/small_cnn/bs/a1.0/many-to-one/tclass1/sall/r0.3/mixup/seed0",
        "seed0-19605870ba2d7454",
        "synthetic/bs/a1.0/many-to-one/tclass1/sall/r0.3/seed0-19605870ba2d7454",
    ),
    (
        "cifar10/small_cnn/bs/a1.0/many-to-one/ttruck/sall/r0.1/mixup/seed1",
        "seed1-d011e0a355df5d8a",
        "cifar10/bs/a1.0/many-to-one/ttruck/sall/r0.1/seed1-d011e0a355df5d8a",
    ),
    (
        "cifar10/small_cnn/lv_scaled/a0.1/many-to-one/ttruck/sall/r0.1/none/seed0",
        "seed0-fe6e007e7c6e4b4f",
        "cifar10/lv_scaled/a0.1/many-to-one/ttruck/sall/r0.1/seed0-fe6e007e7c6e4b4f",
    ),
    (
        "flowers/small_cnn/bs/a1.0/many-to-one/trose/sall/r0.1/none/seed2",
        "seed2-d1717faaf7da3cba",
        "flowers/bs/a1.0/many-to-one/trose/sall/r0.1/seed2-d1717faaf7da3cba",
    ),
]


@pytest.mark.parametrize("name", PUBLISHED)
def test_every_published_run_gets_its_run_id_back_from_its_factors(name):
    rows = pd.read_parquet(REPO / "docs" / "results" / name / "runs.parquet")
    assert len(rows) > 50
    for row in rows.to_dict("records"):
        run = Run.from_mapping(row)
        assert run.run_id == row["run_id"]
        assert Run.from_run_id(row["run_id"]) == run


@pytest.mark.parametrize(("run_id", "split", "poison_id"), PINNED)
def test_run_split_and_poison_ids_are_the_ones_published(run_id, split, poison_id):
    run = Run.from_run_id(run_id)
    assert run.run_id == run_id
    assert run.split("per-run") == split
    assert run.poison_id("per-run") == poison_id
    assert run.poison_id("shared") == poison_id.rsplit("/", 1)[0] + f"/seed{run.seed}"


def test_run_fields_are_the_factors_in_declaration_order():
    assert tuple(Run.__dataclass_fields__) == FACTOR_NAMES
    assert FACTOR_NAMES[:3] == ("dataset", "model", "trigger")
    assert factors.REQUIRED_FACTORS == ("dataset", "model", "trigger")


def test_templates_come_from_the_segments():
    fixed = [factor.segment for factor in FACTORS if not factor.path_omits_default]
    assert "/".join(fixed) == RUN_ID_TEMPLATE
    assert RUN_ID_TEMPLATE == (
        "{dataset}/{model}/{trigger}/a{alpha}/{strategy}/t{poison_class}/s{source}/r{poison_rate}/{regularizer}/seed{seed}"
    )
    assert (
        POISON_ID_TEMPLATE == "{dataset}/{trigger}/a{alpha}/{strategy}/t{poison_class}/s{source}/r{poison_rate}/{split}"
    )


def test_the_run_wildcard_matches_run_ids_and_nothing_around_them():
    run_id = PINNED[0][0]
    assert re.fullmatch(WILDCARD_CONSTRAINTS["run"], run_id)
    assert WILDCARD_CONSTRAINTS["run"] == RUN_ID_PATTERN
    assert not re.fullmatch(RUN_ID_PATTERN, run_id + "/poison")
    assert not re.fullmatch(RUN_ID_PATTERN, PINNED[0][2])
    # One wildcard per poisoning factor, and the split (the poison rule's path).
    assert set(WILDCARD_CONSTRAINTS) == {"run", "split"} | {f.name for f in FACTORS if f.poisoning}


def test_typed_row_converts_each_factor_to_its_declared_type():
    text = dict(re.fullmatch(factors._run_id_regex(capture=True), PINNED[1][0]).groupdict())
    typed = typed_row(text)
    assert typed["alpha"] == 0.3 and isinstance(typed["alpha"], float)
    assert typed["seed"] == 0 and isinstance(typed["seed"], int)
    assert isinstance(typed["poison_class"], str)
    with pytest.raises(ValueError, match=r"run parameters lack 'seed'; required: dataset, model"):
        typed_row({key: value for key, value in text.items() if key != "seed"})


def test_schema_experiment_keys_and_defaults_are_the_declarations():
    experiment = load_schema()["$defs"]["experiment"]
    properties = experiment["properties"]
    keys = ("description", "retrain", "phases", "analyses", "filter_retrain")  # not factors: what is done with the runs
    assert [key for key in properties if key not in keys] == list(FACTOR_NAMES)
    assert experiment["required"] == list(factors.REQUIRED_FACTORS)
    for factor in FACTORS:
        if factor.default is None:
            assert "default" not in properties[factor.name], factor.name
        else:
            assert properties[factor.name]["default"] == factor.default, factor.name


def test_every_factor_section_is_a_config_section():
    top = load_schema()["properties"]
    for factor in FACTORS:
        if factor.section is not None:
            assert factor.section in top, factor.name
        if factor.train_setting is not None:
            # Each value's block of training settings: the train block's keys.
            assert top[factor.section]["additionalProperties"] == {"$ref": "#/$defs/train"}
            assert factor.train_setting in load_schema()["$defs"]["train"]["properties"]


def test_an_added_factor_at_its_default_leaves_the_run_id_alone():
    base = Run.from_run_id(PINNED[0][0])
    assert base.optimizer == factors.DEFAULT
    sgd = Run(**{**base.params(), "optimizer": "sgd"})
    assert sgd.run_id == PINNED[0][0] + "/opt-sgd"
    assert Run.from_run_id(sgd.run_id) == sgd
    assert re.fullmatch(RUN_ID_PATTERN, sgd.run_id)
    assert sgd.identity() == sgd.params() and "optimizer" not in base.identity()
    # Positional construction of the fields before it still works (it has a default).
    assert Run(*[base.params()[name] for name in FACTOR_NAMES[:-1]]) == base

"""Property-based tests of config validation (Hypothesis): random mutations of a valid config.

A mutation drops a key or list item, replaces a value (another type, an
out-of-range number, an unknown name, an empty list or mapping, a subtree
from elsewhere in the config), wraps a value in a list, a seed range or a
per-dataset mapping, or adds a key (unknown, or of another type), anywhere
in a variant of the quickstart config (most often in ``experiments``).
Whatever the mutation, ``prepare_config`` either accepts the config, whose
runs then use only names the config declares, or rejects it with a
``ValueError`` naming a key on the mutated path; never another exception.
It changes a config only by filling in defaults, and a completed config
loads again to itself.
"""

from __future__ import annotations

import contextlib
import copy
import math
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from backdoor_eval import config as cfg
from backdoor_eval import configview as cv
from backdoor_eval import experiments as ex
from backdoor_eval import schema
from backdoor_eval.factors import FACTOR_NAMES
from backdoor_eval.names import ALL_CLASSES, MANY_TO_ONE, ONE_TO_ONE, STRATEGIES

pytest.importorskip("torch")  # check_registries imports the package registries

REPO = Path(__file__).resolve().parents[1]
BASE = yaml.safe_load((REPO / "config" / "quickstart.yaml").read_text())

# Names the config uses, names it does not, and texts with a meaning somewhere in the config.
TEXTS = [
    "zz_unknown",
    "",
    "a/b",
    "all",
    "others",
    "default",
    "none",
    "class0",
    "class1",
    "bs",
    "lv",
    "small_cnn",
    "synthetic",
    "E1",
    "E3",
    "many-to-one",
    "one-to-one",
    "poison",
    "clean",
    "adamx",
    "1e-5",
    "12",
]
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-2, 12),
    st.sampled_from([10**12, -(10**12)]),
    st.floats(-2, 2),
    st.sampled_from([math.nan, math.inf, -math.inf, 0.0, 0.5, 1.0]),
    st.sampled_from(TEXTS),
)
# Mapping keys: config words in the wrong place, and keys YAML reads as other types (1:, null:, true:, 1.5:).
KEYS = st.one_of(
    st.sampled_from(["zz_unknown", "range", "synthetic", "E7", "train", "kind", "classes", "params"]),
    st.sampled_from(["seed", "alpha", "model", "strategy", "source", "phases"]),
    st.integers(0, 3),
    st.none(),
    st.booleans(),
    st.just(1.5),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(KEYS, inner, max_size=3)),
    max_leaves=5,
)
# Seed ranges, empty and reversed ones included.
RANGES = st.one_of(st.integers(-1, 3), st.lists(st.integers(-1, 4), max_size=3), st.just([3, 3]))
OPERATIONS = ["drop", "replace", "empty", "wrap", "per-dataset", "add", "swap"]


def _children(node: Any) -> list[tuple[Any, bool]]:
    """``(key, is_list_index)`` of each child of a mapping or list."""
    if isinstance(node, dict):
        return [(key, False) for key in node]
    if isinstance(node, list):
        return [(i, True) for i in range(len(node))]
    return []


def _draw_path(data: st.DataObject, root: dict) -> list[tuple[Any, bool]]:
    """A random path from the root, at least one key deep, most often into ``experiments``.

    Each level goes deeper with probability 3/4.
    """
    keys = [(key, False) for key in root] + [("experiments", False)] * 4 * ("experiments" in root)
    path = [data.draw(st.sampled_from(keys), label="key")]
    node = root[path[0][0]]
    while _children(node) and data.draw(st.integers(0, 3), label="deeper") > 0:
        key, is_index = data.draw(st.sampled_from(_children(node)), label="child")
        path.append((key, is_index))
        node = node[key]
    return path


def _at(root: Any, path: list[tuple[Any, bool]]) -> Any:
    for key, _ in path:
        root = root[key]
    return root


# Blocks the quickstart can do without (their defaults, or no Table 1 / Fig. 2).
OPTIONAL = ["name", "device", "split", "keep_models", "gpu_lock_dir", "train", "triggers", "outputs", "table1"]
OPTIONAL += ["gallery", "resources"]


# Valid seed factors: a seed, a list, a range (N or [start, stop]).
SEEDS = st.sampled_from([0, 3, [0, 2], {"range": 2}, {"range": [1, 3]}])


def per_dataset(data: st.DataObject, config: dict) -> None:
    """Give some factors of each experiment (all on the one dataset) in the per-dataset form."""
    for spec in config["experiments"].values():
        factors = [
            f for f in spec if f in FACTOR_NAMES[1:] and not (isinstance(spec[f], dict) and "synthetic" in spec[f])
        ]
        for factor in data.draw(st.sets(st.sampled_from(factors)) if factors else st.just(()), label="per-dataset"):
            spec[factor] = {"synthetic": spec[factor]}


def valid_config(data: st.DataObject) -> dict:
    """A variant of the quickstart config.

    Some optional blocks omitted (without ``outputs``, some experiments
    too), seeds given to some experiments, some factors per dataset.
    """
    config = copy.deepcopy(BASE)
    for key in data.draw(st.sets(st.sampled_from(OPTIONAL)), label="omitted blocks"):
        del config[key]
    if "outputs" not in config:
        kept = data.draw(st.sets(st.sampled_from(list(config["experiments"])), min_size=1), label="experiments")
        config["experiments"] = {name: spec for name, spec in config["experiments"].items() if name in kept}
    for spec in config["experiments"].values():
        if data.draw(st.booleans(), label="seeded"):
            spec["seed"] = _fresh(data, SEEDS, "seed")
    per_dataset(data, config)
    return config


def _fresh(data: st.DataObject, strategy: st.SearchStrategy, label: str) -> Any:
    """A drawn value the config may own: the strategies hand out shared objects (``[]``, ``[3, 3]``)."""
    return copy.deepcopy(data.draw(strategy, label=label))


def mutate(data: st.DataObject, config: dict) -> list[tuple[Any, bool]]:
    """Apply one random mutation to ``config`` in place; return the path it touched."""
    path = _draw_path(data, config)
    parent, (key, _) = _at(config, path[:-1]), path[-1]
    operation = data.draw(st.sampled_from(OPERATIONS), label="operation")
    if operation == "drop":
        del parent[key]
    elif operation == "replace":
        parent[key] = _fresh(data, VALUES, "value")
    elif operation == "empty":
        parent[key] = _fresh(data, st.sampled_from([[], {}, ""]), "empty")
    elif operation == "wrap":  # the value, or another, in a list or a seed range
        value = _fresh(data, st.one_of(st.just(parent[key]), VALUES, RANGES), "wrapped")
        wrapper = data.draw(st.sampled_from(["list", "pair", "range"]), label="wrapper")
        parent[key] = {"list": [value], "pair": [value, value]}.get(wrapper, {wrapper: value})
    elif operation == "per-dataset":  # the value, or another, for one dataset (declared or not)
        value = _fresh(data, st.one_of(st.just(parent[key]), VALUES, RANGES.map(lambda r: {"range": r})), "value")
        parent[key] = {data.draw(st.sampled_from(["synthetic", "zz_unknown"]), label="dataset"): value}
    elif operation == "add":
        target = _at(config, path)
        if not isinstance(target, dict):  # add beside the value instead
            target, path = parent, path[:-1]
        if isinstance(target, list):
            target.append(_fresh(data, VALUES, "value"))
            return [*path, (len(target) - 1, True)]
        new_key = data.draw(KEYS, label="new key")
        target[new_key] = _fresh(data, VALUES, "value")
        return [*path, (new_key, False)]
    else:  # swap: a subtree of the valid config, somewhere it does not belong
        parent[key] = copy.deepcopy(_at(BASE, _draw_path(data, BASE)))
    return path


def names_on(message: str, path: list[tuple[Any, bool]]) -> bool:
    """Whether ``message`` names a key of ``path`` (list indices and empty keys aside) as a whole word."""
    names = {str(key) for key, is_index in path if not is_index and str(key)}
    return any(re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", message) for name in names)


def prepared(config: dict) -> dict:
    return cfg.prepare_config(config, check_registries=True)


def check_runs(config: dict) -> None:
    """Every run of an accepted config uses names and values the config declares."""
    expanded = ex.expand(config)
    assert list(expanded) == list(config["experiments"])
    for name, runs in expanded.items():
        assert runs, f"experiment {name} of an accepted config has no runs"
        for run in runs:
            classes = cv.dataset_classes(config, run.dataset)
            assert run.dataset in config["datasets"]
            assert run.model in config["models"]
            assert run.trigger in cv.trigger_names(config)
            assert run.regularizer in cv.regularizer_names(config)
            assert run.strategy in STRATEGIES
            assert run.poison_class in classes
            if run.strategy == MANY_TO_ONE:
                assert run.source == ALL_CLASSES
            else:
                assert run.strategy == ONE_TO_ONE and run.source in classes and run.source != run.poison_class
            assert 0.0 <= run.alpha <= 1.0 and 0.0 < run.poison_rate < 1.0
            assert isinstance(run.seed, int) and run.seed >= 0
            assert ex.Run.from_run_id(run.run_id) == run


@given(st.data())
def test_the_quickstart_config_without_optional_blocks_is_valid(data):
    config = prepared(valid_config(data))
    check_runs(config)


@given(st.data())
def test_a_factor_given_per_dataset_gives_the_same_runs(data):
    config = valid_config(data)
    runs = ex.expand(prepared(copy.deepcopy(config)))
    per_dataset(data, config)
    assert ex.expand(prepared(config)) == runs


@settings(max_examples=3 * settings.default.max_examples)  # the widest search; 10-20 ms an example
@given(st.data())
def test_a_mutated_config_is_accepted_or_rejected_naming_the_mutated_key(data):
    config = valid_config(data)
    paths = [mutate(data, config) for _ in range(data.draw(st.integers(1, 3), label="mutations"))]
    try:
        prepared(config)
    except ValueError as exc:
        message = str(exc)
        assert any(names_on(message, path) for path in paths), f"{message!r} names none of {paths}"
        return
    check_runs(config)


@given(st.data())
def test_prepare_config_only_fills_defaults_into_a_config_it_rejects(data):
    original = valid_config(data)
    for _ in range(data.draw(st.integers(1, 2), label="mutations")):
        mutate(data, original)
    config, schema_filled = copy.deepcopy(original), copy.deepcopy(original)
    try:
        prepared(config)
    except ValueError:
        with contextlib.suppress(ValueError):
            schema.validate_schema(schema_filled)
        assert config == schema_filled
    assert_contains(config, original)


def assert_contains(filled: Any, original: Any) -> None:
    """``filled`` is ``original`` with keys added to its mappings, nothing removed or changed."""
    if isinstance(original, dict):
        assert isinstance(filled, dict) and list(original) == [key for key in filled if key in original]
        for key, value in original.items():
            assert_contains(filled[key], value)
    elif isinstance(original, list):
        assert isinstance(filled, list) and len(filled) == len(original)
        for item, value in zip(filled, original):
            assert_contains(item, value)
    else:
        assert filled is original or filled == original


@given(st.data())
def test_prepare_config_is_idempotent_and_survives_a_yaml_round_trip(data):
    config = valid_config(data)
    for _ in range(data.draw(st.integers(0, 2), label="mutations")):
        mutate(data, config)
    try:
        prepared(config)
    except ValueError:
        return
    again = prepared(copy.deepcopy(config))
    assert again == config
    # What `backdoor-eval show-config` prints loads back to the same config.
    printed = yaml.safe_load(yaml.safe_dump(config, sort_keys=False))
    assert repr(prepared(printed)) == repr(config)  # repr: a NaN read back equals the NaN written
    assert ex.expand(printed) == ex.expand(config)

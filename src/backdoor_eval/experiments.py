"""The experiment grid: config factor lists -> runs (docs/decisions.md#experiment-grid).

``expand(config)`` takes the product of each experiment's factor lists
(config/README.md; missing factors take their declared defaults,
``backdoor_eval.factors``) and returns one list of :class:`Run` per
experiment. A run's parameters map one-to-one to its output path
(``Run.run_id``), so a run shared by two experiments is one path and
Snakemake trains it once; :func:`union` de-duplicates across experiments.
Every factor except ``dataset`` may be a per-dataset mapping
(``{cifar10: [truck], flowers: [rose]}``).

The config is read through its typed view (``backdoor_eval.configview.ConfigView``,
built once per expansion) and checked by ``backdoor_eval.validation``. Light (no torch, no pandas): the
Snakefile imports it at parse time, on every cluster job too.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping
from typing import Any

# Besides the view: the config readers this module once imported, still importable from here
# (``experiments.outputs``, ...).
from backdoor_eval.configview import (  # noqa: F401
    ConfigView,
    dataset_classes,
    declared_names,
    experiment_phases,
    names_of,
    needs_fit,
    outputs,
    split_of,
    split_policy,
    thaw,
    trigger_default_alpha,
    trigger_kind,
    view,
)
from backdoor_eval.factors import DEFAULT, FACTOR_BY_NAME, FACTOR_DEFAULTS, FACTOR_NAMES, Run
from backdoor_eval.layout import Layout
from backdoor_eval.names import ALL_CLASSES, CLEAN_PHASE, MANY_TO_ONE, OTHER_CLASSES, STRATEGIES

EXPERIMENT_KEYS = (*FACTOR_NAMES, "description", "retrain", "phases", "analyses", "filter_retrain")
# ``alpha: default`` in a factor list: the trigger's default transparency.
DEFAULT_ALPHA = DEFAULT


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _is_per_dataset(factor: str, value: Any) -> bool:
    return isinstance(value, Mapping) and not (factor == "seed" and "range" in value)


def _seeds(value: Mapping[str, Any], path: str) -> list[int]:
    """The seeds of ``{range: N}`` (0..N-1) or ``{range: [start, stop]}``; an empty range is an error.

    Checked here as well as in the schema: a per-dataset value escapes the schema's checks.
    """
    bounds = value.get("range")
    pair = list(bounds) if isinstance(bounds, (list, tuple)) else [0, bounds]
    if (
        set(value) != {"range"}
        or len(pair) != 2
        or not all(isinstance(bound, int) and not isinstance(bound, bool) for bound in pair)
        or not 0 <= pair[0] < pair[1]
    ):
        raise _PathError(
            path,
            f"{thaw(value)!r} is not a seed range; allowed: {{range: N}} (seeds 0..N-1, N >= 1) "
            "or {range: [start, stop]} (seeds start..stop-1, 0 <= start < stop)",
        )
    return list(range(pair[0], pair[1]))


def _values(spec: Mapping[str, Any], factor: str, dataset: str) -> list[tuple[str, Any]]:
    """``(config path, value)`` pairs of the factor for ``dataset``; paths name list items (``alpha[3]``)."""
    value = spec.get(factor, FACTOR_DEFAULTS.get(factor))
    path = factor
    if _is_per_dataset(factor, value):
        if dataset not in value:
            raise _PathError(
                factor, f"no entry for dataset {dataset!r}; per-dataset keys: {', '.join(map(str, value))}"
            )
        value, path = value[dataset], f"{factor}.{dataset}"
    if factor == "seed" and isinstance(value, Mapping):
        return [(path, seed) for seed in _seeds(value, path)]
    if isinstance(value, (list, tuple)):
        if not value:
            raise _PathError(path, "is an empty list; give at least one value")
        values = [(f"{path}[{i}]", item) for i, item in enumerate(value)]
    else:
        values = [(path, value)]
    for item_path, item in values:
        # A per-dataset value escapes the schema's checks of the factor's forms.
        if isinstance(item, (Mapping, list, tuple)):
            raise _PathError(item_path, f"{thaw(item)!r} is not a single value; allowed: a value or a list of values")
    return values


class _PathError(ValueError):
    """A config error at a path relative to the experiment (prefixed by the caller)."""

    def __init__(self, path: str, message: str):
        super().__init__(f"{path}: {message}")
        self.path, self.message = path, message


def _expand_one(config: ConfigView | Mapping[str, Any], spec: Mapping[str, Any], check: bool) -> list[Run]:
    """The runs of one experiment's factor lists ``spec`` (``check``: each value checked, naming its path)."""
    config = view(config)
    runs: dict[Run, None] = {}  # ordered set
    for dataset in _as_list(spec.get("dataset")):
        classes = config.dataset_classes(dataset) if not check else _checked_classes(config, dataset, spec)
        per_factor = {factor: _values(spec, factor, dataset) for factor in FACTOR_NAMES[1:]}
        for combo in itertools.product(*per_factor.values()):
            chosen = dict(zip(per_factor, combo))
            for run in _resolve(config, dataset, classes, chosen, check):
                runs.setdefault(run, None)
    return list(runs)


def _checked_classes(config: ConfigView, dataset: str, spec: Mapping[str, Any]) -> list[str]:
    if dataset not in config.datasets:
        index = _as_list(spec.get("dataset")).index(dataset)
        path = f"dataset[{index}]" if isinstance(spec.get("dataset"), (list, tuple)) else "dataset"
        raise _PathError(
            path, f"{dataset!r} is not a dataset declared in config datasets; declared: {config.names_of('datasets')}"
        )
    return config.dataset_classes(dataset)


def _resolve(
    config: ConfigView,
    dataset: str,
    classes: list[str],
    chosen: Mapping[str, tuple[str, Any]],
    check: bool,
) -> Iterable[Run]:
    """Turn one combination of factor values (``chosen``: factor -> (config path, value)) into runs:
    ``alpha: default`` becomes the trigger's alpha, ``all``/``others`` classes widen to one run each."""
    values = {factor: value for factor, (_, value) in chosen.items()}
    if check:
        _check_values(config, chosen)
    trigger, alpha, strategy, source = values["trigger"], values["alpha"], values["strategy"], values["source"]
    if alpha == DEFAULT_ALPHA:
        values["alpha"] = config.trigger(trigger).default_alpha
    elif check:
        check_alpha(chosen["alpha"][0], alpha)
    class_path, source_path = chosen["poison_class"][0], chosen["source"][0]
    poison_classes = classes if values["poison_class"] == ALL_CLASSES else [values["poison_class"]]
    for target in poison_classes:
        if check and target not in classes:
            raise _PathError(
                class_path, f"{target!r} is not a class of dataset {dataset}; classes: {', '.join(classes)}"
            )
        if strategy == MANY_TO_ONE:
            sources = [ALL_CLASSES]
        elif source in (ALL_CLASSES, OTHER_CLASSES):
            sources = [c for c in classes if c != target]
        else:
            if check and source not in classes:
                raise _PathError(
                    source_path, f"{source!r} is not a class of dataset {dataset}; classes: {', '.join(classes)}"
                )
            if check and source == target:
                raise _PathError(
                    source_path,
                    f"{source!r} is the poison class; a one-to-one source must be another class of {dataset}",
                )
            sources = [source]
        for src in sources:
            yield Run.from_mapping({**values, "dataset": dataset, "poison_class": target, "source": src})


def _check_values(config: ConfigView, chosen: Mapping[str, tuple[str, Any]]) -> None:
    """The checks of single factor values: names declared in their config section, strategies, rates, seeds."""
    for name, (path, value) in chosen.items():
        factor = FACTOR_BY_NAME[name]
        if factor.section is not None and value != factor.default:
            declared = config.declared_names(factor.section)
            if value not in declared:
                raise _PathError(
                    path,
                    f"{value!r} is not declared in config {factor.section}; declared: {', '.join(declared) or '(none)'}",
                )
    _check_in(*chosen["strategy"], STRATEGIES, "a poisoning strategy")
    _check_rate(*chosen["poison_rate"])
    seed_path, seed = chosen["seed"]
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise _PathError(seed_path, f"{seed!r} is not a seed; allowed: whole numbers >= 0")


def _check_in(path: str, value: Any, allowed: Iterable[Any], what: str) -> None:
    allowed = list(allowed)
    if value not in allowed:
        raise _PathError(path, f"{value!r} is not {what}; allowed: {', '.join(map(str, allowed))}")


def check_alpha(path: str, value: Any) -> None:
    """Alpha at config ``path``, checked by the trigger's own rule (``triggers.validate_alpha``)."""
    from backdoor_eval.triggers import validate_alpha

    try:
        validate_alpha(value)
    except ValueError as exc:
        raise _PathError(path, str(exc)) from None


def _check_rate(path: str, value: Any) -> None:
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not (is_number and 0.0 < value < 1.0):
        raise _PathError(path, f"{value!r} is outside (0, 1)")


def expand(config: ConfigView | Mapping[str, Any]) -> dict[str, list[Run]]:
    """Each experiment's runs: the product of its factor lists, defaults filled in.

    Order follows the config; duplicates within an experiment (e.g. ``alpha:
    [default, 0.1]`` for sin) are dropped. Call :func:`validate` first for
    error messages that name the config key. ``config``: the config or its view.
    """
    config = view(config)
    return {name: _expand_one(config, spec.grid, check=False) for name, spec in config.experiments.items()}


def union(expanded: Mapping[str, Iterable[Run]] | Iterable[Iterable[Run]]) -> list[Run]:
    """All distinct runs, in first-appearance order (a run shared by experiments once)."""
    groups = expanded.values() if isinstance(expanded, Mapping) else expanded
    seen: dict[Run, None] = {}
    for runs in groups:
        for run in runs:
            seen.setdefault(run, None)
    return list(seen)


def retrain_runs(config: ConfigView | Mapping[str, Any], expanded: Mapping[str, list[Run]] | None = None) -> list[Run]:
    """Distinct runs that need the clean phase (in an experiment reporting phase ``clean``)."""
    config = view(config)
    expanded = expand(config) if expanded is None else expanded
    return union(runs for name, runs in expanded.items() if CLEAN_PHASE in config.experiments[name].phases)


def counts(config: ConfigView | Mapping[str, Any]) -> dict[str, Any]:
    """Job counts: per experiment (runs, phases) and for the de-duplicated grid."""
    config = view(config)
    expanded = expand(config)
    distinct = union(expanded)
    fitted = [run for run in distinct if config.trigger(run.trigger).needs_fit]
    return {
        "experiments": {
            name: {"runs": len(runs), "phases": list(config.experiments[name].phases)}
            for name, runs in expanded.items()
        },
        "distinct_runs": len(distinct),
        "retrain_jobs": len(retrain_runs(config, expanded)),
        "split": config.split,
        "poisoned_sets": len({config.poison_id(run) for run in distinct}),
        "partitions": len({(run.dataset, config.split_of(run)) for run in distinct}),
        # One per fitted trigger kind (lv) and split its runs use.
        "trigger_fits": len({(config.trigger(run.trigger).kind, run.dataset, config.split_of(run)) for run in fitted}),
    }


def format_counts(config: ConfigView | Mapping[str, Any]) -> str:
    """The per-experiment count table printed by ``backdoor-eval expand`` and at workflow start."""
    summary = counts(config)
    lines = [f"{'experiment':<12}{'runs':>6}  phases"]
    for name, info in summary["experiments"].items():
        lines.append(f"{name:<12}{info['runs']:>6}  {'+'.join(info['phases'])}")
    lines.append(
        f"distinct runs (train jobs): {summary['distinct_runs']}; retrain jobs: {summary['retrain_jobs']}; "
        f"poisoned sets: {summary['poisoned_sets']}; partitions ({summary['split']} split): "
        f"{summary['partitions']}; trigger fits: {summary['trigger_fits']}"
    )
    return "\n".join(lines)


def membership(config: ConfigView | Mapping[str, Any], results_dir: str) -> dict[str, Any]:
    """The membership document ``backdoor-eval aggregate --membership`` reads.

    ``results_dir`` is ``results/{config_name}``; each run's files are the
    ones the workflow's ``summarize`` rule writes (:class:`backdoor_eval.layout.Layout`),
    and the ``aggregate`` rule declares exactly these files as its inputs.
    """
    config = view(config)
    layout = Layout(results_dir)
    expanded = expand(config)
    document: dict[str, Any] = {
        "config_name": config.name,
        "experiments": {
            name: {
                "description": config.experiments[name].description,
                "phases": list(config.experiments[name].phases),
                "runs": [run.run_id for run in runs],
            }
            for name, runs in expanded.items()
        },
        "outputs": config.outputs,
        "runs": {},
    }
    for run in union(expanded):
        document["runs"][run.run_id] = {
            "summary": layout.run_summary(run.run_id),
            "epochs": layout.run_epochs(run.run_id),
        }
    return document

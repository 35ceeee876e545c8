"""The experiment grid: config factor lists -> runs (docs/decisions.md#experiment-grid).

A config's ``experiments:`` block names each experiment (E1..E6 in the paper
config) by factor lists::

    E4:
      dataset: [cifar10, flowers]
      model: [resnet50, nasnet_large, nasnet_mobile]
      trigger: [sin, lv]
      alpha: [0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0]
      poison_class: {cifar10: [truck], flowers: [rose]}
      poison_rate: [0.05, 0.1]
      seed: {range: 2}
      retrain: true

``expand(config)`` takes the product of the factors (missing ones take
their declared defaults, ``backdoor_eval.factors``: many-to-one, poison rate
0.1, the trigger's default alpha, no regularizer, seed 0, the training
settings' optimizer) and returns one list of :class:`Run` per
experiment. A run's parameters map one-to-one to its output path
(``Run.run_id``), so a run shared by two experiments is one path and
Snakemake trains it once; :func:`union` de-duplicates across experiments.

Every factor except ``dataset`` may instead be a per-dataset mapping
(``{cifar10: [truck], flowers: [rose]}``), which is how E4 and E6 pair a
poison class (and E6 a trigger) with each dataset.

This module is light (no torch, no pandas): the Snakefile imports it at
parse time, on every cluster job too.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from backdoor_eval.config import schema_default
from backdoor_eval.factors import (
    DEFAULT,
    FACTOR_BY_NAME,
    FACTOR_DEFAULTS,
    FACTOR_NAMES,
    FACTORS,
    NAME_RE,
    REQUIRED_FACTORS,
    WILDCARD_CONSTRAINTS,
    Run,
)
from backdoor_eval.layout import Layout
from backdoor_eval.names import (
    ALL_CLASSES,
    CLEAN_PHASE,
    MANY_TO_ONE,
    NO_REGULARIZER,
    OTHER_CLASSES,
    OUTPUTS,
    PHASES,
    POISON_PHASE,
    STRATEGIES,
    check_output_experiment_count,
    experiment_list,
)

__all__ = ["WILDCARD_CONSTRAINTS", "Run"]  # the factors' declarations (backdoor_eval.factors), used with the grid

# The outputs mapping is the schema's (one definition); factor defaults are the factors' own.
DEFAULT_OUTPUTS: dict[str, list[str]] = {
    name: experiment_list(value) for name, value in schema_default("outputs").items()
}
EXPERIMENT_KEYS = (*FACTOR_NAMES, "description", "retrain", "phases")
# ``alpha: default`` in a factor list: the trigger's default transparency.
DEFAULT_ALPHA = DEFAULT
_NAME_RE = NAME_RE


# --------------------------------------------------------------------------- config accessors


def datasets(config: Mapping[str, Any]) -> dict[str, Any]:
    return dict(config.get("datasets") or {})


def dataset_classes(config: Mapping[str, Any], dataset: str) -> list[str]:
    """The class names the config declares for ``dataset``, in label order."""
    try:
        return list(config["datasets"][dataset]["classes"])
    except (KeyError, TypeError):
        raise ValueError(
            f"dataset {dataset!r} is not declared in config datasets; declared: {_names(config, 'datasets')}"
        ) from None


def trigger_names(config: Mapping[str, Any]) -> list[str]:
    """The config's triggers; without a ``triggers:`` block, every registered trigger."""
    if config.get("triggers"):
        return list(config["triggers"])
    from backdoor_eval.triggers import TRIGGERS

    return TRIGGERS.names()


def regularizer_names(config: Mapping[str, Any]) -> list[str]:
    names = list(config.get("regularizers") or {})
    return names if NO_REGULARIZER in names else [NO_REGULARIZER, *names]


def trigger_kind(config: Mapping[str, Any], trigger: str) -> str:
    """The registry name of the config's trigger ``trigger`` (``triggers.<name>.kind``, else the name)."""
    spec = (config.get("triggers") or {}).get(trigger) or {}
    return str(spec.get("kind") or trigger)


def uses_lv_fit(config: Mapping[str, Any], trigger: str) -> bool:
    """Whether the trigger is the low-variance one, which needs its split's PCA fit."""
    return trigger_kind(config, trigger) == "lv"


def trigger_default_alpha(config: Mapping[str, Any], trigger: str) -> float:
    """The trigger's default transparency: config ``triggers.<name>.alpha``, else the trigger's own."""
    spec = (config.get("triggers") or {}).get(trigger) or {}
    if spec.get("alpha") is not None:
        return float(spec["alpha"])
    from backdoor_eval.triggers import TRIGGERS

    kind = trigger_kind(config, trigger)
    if kind in TRIGGERS:
        return float(TRIGGERS.get(kind).default_alpha)
    where = f"triggers.{trigger}.kind" if spec.get("kind") else f"triggers.{trigger}"
    raise ValueError(
        f"{where}: {kind!r} is not registered in backdoor_eval.triggers.TRIGGERS; registered: {', '.join(TRIGGERS.names())}"
    )


def trigger_params(config: Mapping[str, Any], trigger: str) -> dict[str, Any]:
    """Extra keyword parameters of the trigger (``triggers.<name>.params``, e.g. lv ``reading``)."""
    spec = (config.get("triggers") or {}).get(trigger) or {}
    return dict(spec.get("params") or {})


def lv_variance_fraction(config: Mapping[str, Any]) -> float | None:
    """``triggers.lv.variance_fraction``, or ``None`` for the LV fit's own default."""
    spec = (config.get("triggers") or {}).get("lv") or {}
    value = spec.get("variance_fraction")
    return None if value is None else float(value)


def model_spec(config: Mapping[str, Any], model: str) -> tuple[str, dict[str, Any]]:
    """``(arch, model_params)`` for the train command: the registry name and its keyword
    arguments, ``pretrained`` and ``weights`` included."""
    try:
        spec = dict(config["models"][model] or {})
    except (KeyError, TypeError):
        raise ValueError(
            f"model {model!r} is not declared in config models; declared: {_names(config, 'models')}"
        ) from None
    params = dict(spec.get("params") or {})
    params["pretrained"] = bool(spec.get("pretrained", False))
    params["weights"] = spec.get("weights")
    return str(spec.get("arch") or model), params


def regularizer_params(config: Mapping[str, Any], regularizer: str) -> dict[str, Any]:
    """Keyword parameters of the regularizer (``weight`` and its hyper-parameters)."""
    spec = (config.get("regularizers") or {}).get(regularizer)
    if spec is None and regularizer != NO_REGULARIZER:
        raise ValueError(
            f"regularizer {regularizer!r} is not declared in config regularizers; declared: {', '.join(regularizer_names(config))}"
        )
    return dict(spec or {})


def lv_save_components(config: Mapping[str, Any]) -> bool:
    """``triggers.lv.save_components`` (default true): keep the PCA components in each LV fit file."""
    spec = (config.get("triggers") or {}).get("lv") or {}
    return bool(spec.get("save_components", True))


def split_policy(config: Mapping[str, Any]) -> str:
    """``split:`` of the config: ``per-run`` (the paper's) or ``shared``."""
    return str(config.get("split") or schema_default("split"))


def split_of(config: Mapping[str, Any], run: Run) -> str:
    """The split ``run`` trains on under the config's split policy."""
    return run.split(split_policy(config))


def train_layers(
    config: Mapping[str, Any], dataset: str, model: str, factors: Mapping[str, Any] | None = None
) -> list[tuple[str, Mapping[str, Any]]]:
    """The config blocks that set ``model``'s training on ``dataset``, as (key path, block), later ones winning:
    ``train``, ``datasets.<d>.train``, ``models.<m>.train``, ``models.<m>.train_per_dataset.<d>``, then
    for a run (``factors``: its factor values) each training-setting factor off its default: its value,
    and its block in the factor's config section (e.g. ``optimizers.<name>``)."""
    model_spec = (config.get("models") or {}).get(model) or {}
    layers: list[tuple[str, Mapping[str, Any]]] = [
        ("train", config.get("train") or {}),
        (f"datasets.{dataset}.train", ((config.get("datasets") or {}).get(dataset) or {}).get("train") or {}),
        (f"models.{model}.train", model_spec.get("train") or {}),
        (f"models.{model}.train_per_dataset.{dataset}", (model_spec.get("train_per_dataset") or {}).get(dataset) or {}),
    ]
    for factor in FACTORS:
        value = (factors or {}).get(factor.name, factor.default)
        if factor.train_setting is None or value == factor.default:
            continue
        block = ((config.get(factor.section) or {}) if factor.section else {}).get(value) or {}
        layers.append((f"{factor.section}.{value}", {factor.train_setting: value, **block}))
    return layers


def train_params(
    config: Mapping[str, Any], dataset: str, model: str, factors: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Training settings of ``model`` on ``dataset`` (for a run: ``factors``, its factor values): the blocks
    of :func:`train_layers` merged, later keys winning (e.g. a model's input size on one dataset)."""
    merged: dict[str, Any] = {}
    for _, block in train_layers(config, dataset, model, factors):
        merged.update(block)
    return merged


def run_train_params(config: Mapping[str, Any], run: Run) -> dict[str, Any]:
    """The training settings of ``run`` (the ``--train-params`` of its train and retrain jobs)."""
    return train_params(config, run.dataset, run.model, run.values())


def experiment_phases(config: Mapping[str, Any]) -> dict[str, list[str]]:
    """Phases each experiment reports: ``phases:`` if given, else poison (+ clean when ``retrain``)."""
    phases = {}
    for name, spec in (config.get("experiments") or {}).items():
        spec = spec or {}
        default = [POISON_PHASE, CLEAN_PHASE] if spec.get("retrain", False) else [POISON_PHASE]
        phases[name] = list(spec.get("phases") or default)
    return phases


def outputs(config: Mapping[str, Any]) -> dict[str, list[str]]:
    """Tables/figures built from experiments whose experiments all exist in the config."""
    mapping = config.get("outputs")
    mapping = DEFAULT_OUTPUTS if mapping is None else mapping
    experiments = config.get("experiments") or {}
    present = {}
    for output, names in mapping.items():
        names = experiment_list(names)
        if names and all(name in experiments for name in names):
            present[output] = names
    return present


def _names(config: Mapping[str, Any], section: str) -> str:
    return ", ".join(config.get(section) or {}) or "(none)"


# --------------------------------------------------------------------------- expansion


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
            f"{dict(value)!r} is not a seed range; allowed: {{range: N}} (seeds 0..N-1, N >= 1) "
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
            raise _PathError(item_path, f"{item!r} is not a single value; allowed: a value or a list of values")
    return values


class _PathError(ValueError):
    """A config error at a path relative to the experiment (prefixed by the caller)."""

    def __init__(self, path: str, message: str):
        super().__init__(f"{path}: {message}")
        self.path, self.message = path, message


def _expand_one(config: Mapping[str, Any], spec: Mapping[str, Any], check: bool) -> list[Run]:
    runs: dict[Run, None] = {}  # ordered set
    for dataset in _as_list(spec.get("dataset")):
        classes = dataset_classes(config, dataset) if not check else _checked_classes(config, dataset, spec)
        per_factor = {factor: _values(spec, factor, dataset) for factor in FACTOR_NAMES[1:]}
        for combo in itertools.product(*per_factor.values()):
            chosen = dict(zip(per_factor, combo))
            for run in _resolve(config, dataset, classes, chosen, check):
                runs.setdefault(run, None)
    return list(runs)


def _checked_classes(config: Mapping[str, Any], dataset: str, spec: Mapping[str, Any]) -> list[str]:
    if dataset not in (config.get("datasets") or {}):
        index = _as_list(spec.get("dataset")).index(dataset)
        path = f"dataset[{index}]" if isinstance(spec.get("dataset"), (list, tuple)) else "dataset"
        raise _PathError(
            path, f"{dataset!r} is not a dataset declared in config datasets; declared: {_names(config, 'datasets')}"
        )
    return dataset_classes(config, dataset)


def _resolve(
    config: Mapping[str, Any],
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
        values["alpha"] = trigger_default_alpha(config, trigger)
    elif check:
        _check_fraction(chosen["alpha"][0], alpha, closed=True)
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


def _check_values(config: Mapping[str, Any], chosen: Mapping[str, tuple[str, Any]]) -> None:
    """The checks of single factor values: names declared in their config section, strategies, rates, seeds."""
    for name, (path, value) in chosen.items():
        factor = FACTOR_BY_NAME[name]
        if factor.section is not None and value != factor.default:
            declared = declared_names(config, factor.section)
            if value not in declared:
                raise _PathError(
                    path,
                    f"{value!r} is not declared in config {factor.section}; declared: {', '.join(declared) or '(none)'}",
                )
    _check_in(*chosen["strategy"], STRATEGIES, "a poisoning strategy")
    _check_fraction(*chosen["poison_rate"], closed=False)
    seed_path, seed = chosen["seed"]
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise _PathError(seed_path, f"{seed!r} is not a seed; allowed: whole numbers >= 0")


def declared_names(config: Mapping[str, Any], section: str) -> list[str]:
    """The names a factor's values may take from config ``section``: its keys (for ``triggers`` without a
    block, every registered trigger; ``none`` is always a regularizer)."""
    if section == "triggers":
        return trigger_names(config)
    if section == "regularizers":
        return regularizer_names(config)
    return [str(name) for name in config.get(section) or {}]


def _check_in(path: str, value: Any, allowed: Iterable[Any], what: str) -> None:
    allowed = list(allowed)
    if value not in allowed:
        raise _PathError(path, f"{value!r} is not {what}; allowed: {', '.join(map(str, allowed))}")


def _check_fraction(path: str, value: Any, closed: bool) -> None:
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if closed and not (is_number and 0.0 <= value <= 1.0):
        raise _PathError(path, f"{value!r} is outside [0, 1]")
    if not closed and not (is_number and 0.0 < value < 1.0):
        raise _PathError(path, f"{value!r} is outside (0, 1)")


def expand(config: Mapping[str, Any]) -> dict[str, list[Run]]:
    """Each experiment's runs: the product of its factor lists, defaults filled in.

    Order follows the config; duplicates within an experiment (e.g. ``alpha:
    [default, 0.1]`` for sin) are dropped. Call :func:`validate` first for
    error messages that name the config key.
    """
    return {
        name: _expand_one(config, spec or {}, check=False) for name, spec in (config.get("experiments") or {}).items()
    }


def union(expanded: Mapping[str, Iterable[Run]] | Iterable[Iterable[Run]]) -> list[Run]:
    """All distinct runs, in first-appearance order (a run shared by experiments once)."""
    groups = expanded.values() if isinstance(expanded, Mapping) else expanded
    seen: dict[Run, None] = {}
    for runs in groups:
        for run in runs:
            seen.setdefault(run, None)
    return list(seen)


def retrain_runs(config: Mapping[str, Any], expanded: Mapping[str, list[Run]] | None = None) -> list[Run]:
    """Distinct runs that need the clean phase (in an experiment reporting phase ``clean``)."""
    expanded = expand(config) if expanded is None else expanded
    phases = experiment_phases(config)
    return union(runs for name, runs in expanded.items() if CLEAN_PHASE in phases[name])


def counts(config: Mapping[str, Any]) -> dict[str, Any]:
    """Job counts: per experiment (runs, phases) and for the de-duplicated grid."""
    expanded = expand(config)
    phases = experiment_phases(config)
    distinct = union(expanded)
    return {
        "experiments": {name: {"runs": len(runs), "phases": phases[name]} for name, runs in expanded.items()},
        "distinct_runs": len(distinct),
        "retrain_jobs": len(retrain_runs(config, expanded)),
        "split": split_policy(config),
        "poisoned_sets": len({run.poison_id(split_policy(config)) for run in distinct}),
        "partitions": len({(run.dataset, split_of(config, run)) for run in distinct}),
        "lv_fits": len({(run.dataset, split_of(config, run)) for run in distinct if uses_lv_fit(config, run.trigger)}),
    }


def format_counts(config: Mapping[str, Any]) -> str:
    """The per-experiment count table printed by ``backdoor-eval expand`` and at workflow start."""
    summary = counts(config)
    lines = [f"{'experiment':<12}{'runs':>6}  phases"]
    for name, info in summary["experiments"].items():
        lines.append(f"{name:<12}{info['runs']:>6}  {'+'.join(info['phases'])}")
    lines.append(
        f"distinct runs (train jobs): {summary['distinct_runs']}; retrain jobs: {summary['retrain_jobs']}; "
        f"poisoned sets: {summary['poisoned_sets']}; partitions ({summary['split']} split): "
        f"{summary['partitions']}; LV fits: {summary['lv_fits']}"
    )
    return "\n".join(lines)


def membership(config: Mapping[str, Any], results_dir: str) -> dict[str, Any]:
    """The membership document ``backdoor-eval aggregate --membership`` reads.

    ``results_dir`` is ``results/{config_name}``; each run's files are the
    ones the workflow's ``summarize`` rule writes (:class:`backdoor_eval.layout.Layout`),
    and the ``aggregate`` rule declares exactly these files as its inputs.
    """
    layout = Layout(results_dir)
    expanded = expand(config)
    phases = experiment_phases(config)
    specs = config.get("experiments") or {}
    document: dict[str, Any] = {
        "config_name": config.get("name"),
        "experiments": {
            name: {
                "description": (specs[name] or {}).get("description", ""),
                "phases": phases[name],
                "runs": [run.run_id for run in runs],
            }
            for name, runs in expanded.items()
        },
        "outputs": outputs(config),
        "runs": {},
    }
    for run in union(expanded):
        document["runs"][run.run_id] = {
            "summary": layout.run_summary(run.run_id),
            "epochs": layout.run_epochs(run.run_id),
        }
    return document


# --------------------------------------------------------------------------- validation


def validate(config: Mapping[str, Any], check_registries: bool = False) -> None:
    """Check what the JSON schema cannot; raise ``ValueError`` naming the config key.

    Names used by experiments must be declared in the config's ``datasets``,
    ``models``, ``triggers`` and ``regularizers`` sections; alpha must lie in
    [0, 1], poison rates in (0, 1); poison and source classes must be classes
    of the dataset, and a one-to-one source must differ from the poison class.
    With ``check_registries`` the declared names are also checked against the
    package registries (this imports the package modules, torch included).
    """
    _validate_sections(config)
    experiments = config.get("experiments")
    if not isinstance(experiments, Mapping) or not experiments:
        raise ValueError("experiments: at least one experiment is required (a mapping like {E1: {...}})")
    for name, spec in experiments.items():
        prefix = f"experiments.{name}"
        if not isinstance(spec, Mapping):
            raise ValueError(f"{prefix}: {spec!r} is not a mapping of factors")
        unknown = sorted(set(spec) - set(EXPERIMENT_KEYS), key=str)
        if unknown:
            raise ValueError(f"{prefix}.{unknown[0]}: unknown key; allowed: {', '.join(EXPERIMENT_KEYS)}")
        for factor in REQUIRED_FACTORS:
            if spec.get(factor) in (None, [], ()):
                raise ValueError(f"{prefix}.{factor}: required; give a name or a list of names")
        phases = experiment_phases({"experiments": {name: spec}})[name]
        for i, phase in enumerate(phases):
            if phase not in PHASES:
                raise ValueError(f"{prefix}.phases[{i}]: {phase!r} is not a phase; allowed: {', '.join(PHASES)}")
        if CLEAN_PHASE in phases and not spec.get("retrain", False):
            raise ValueError(f"{prefix}.phases: 'clean' needs retrain: true")
        for factor, value in spec.items():
            if _is_per_dataset(factor, value) and factor in FACTOR_NAMES:
                if factor == "dataset":
                    raise ValueError(f"{prefix}.dataset: give a name or a list of names, not a mapping")
                extra = [key for key in value if key not in _as_list(spec.get("dataset"))]
                if extra:
                    raise ValueError(
                        f"{prefix}.{factor}.{extra[0]}: not a dataset of this experiment; datasets: "
                        f"{', '.join(map(str, _as_list(spec.get('dataset'))))}"
                    )
        try:
            _expand_one(config, spec, check=True)
        except _PathError as exc:
            raise ValueError(f"{prefix}.{exc}") from None
    _validate_blocks(config)
    if check_registries:
        _validate_registries(config)


def _validate_sections(config: Mapping[str, Any]) -> None:
    if not _NAME_RE.match(str(config.get("name", ""))):
        raise ValueError(f"name: {config.get('name')!r} is not a valid config name; allowed: letters, digits, _ . + -")
    sets = config.get("datasets")
    if not isinstance(sets, Mapping) or not sets:
        raise ValueError("datasets: at least one dataset is required")
    for section in ("datasets", "models", "triggers", "regularizers"):
        for name in config.get(section) or {}:
            if not _NAME_RE.match(str(name)):
                raise ValueError(
                    f"{section}.{name}: {name!r} is not a valid name; allowed: letters, digits, _ . + - (no '/')"
                )
    for name, spec in sets.items():
        classes = (spec or {}).get("classes")
        if not isinstance(classes, list) or len(classes) < 2:
            raise ValueError(
                f"datasets.{name}.classes: {classes!r}; required: the list of class names in label order (>= 2)"
            )
        for i, cls in enumerate(classes):
            # All-digit names would read as class indices on the command line.
            if (
                not isinstance(cls, str)
                or not _NAME_RE.match(cls)
                or cls in (ALL_CLASSES, OTHER_CLASSES)
                or cls.isdigit()
            ):
                raise ValueError(
                    f"datasets.{name}.classes[{i}]: {cls!r} is not a valid class name; "
                    "allowed: letters, digits, _ . + - (no '/'), not all digits, not 'all'/'others'"
                )
        duplicates = sorted({c for c in classes if classes.count(c) > 1})
        if duplicates:
            raise ValueError(f"datasets.{name}.classes: {duplicates[0]!r} appears twice; class names must be unique")
    for name, spec in (config.get("triggers") or {}).items():
        alpha = (spec or {}).get("alpha")
        if alpha is not None:
            try:
                _check_fraction("alpha", alpha, closed=True)
            except _PathError as exc:
                raise ValueError(f"triggers.{name}.{exc}") from None
    for name, spec in (config.get("models") or {}).items():
        for dataset in (spec or {}).get("train_per_dataset") or {}:
            if dataset not in sets:
                raise ValueError(
                    f"models.{name}.train_per_dataset.{dataset}: not a dataset declared in config datasets; "
                    f"declared: {_names(config, 'datasets')}"
                )
    for name, spec in (config.get("regularizers") or {}).items():
        weight = (spec or {}).get("weight")
        if weight is not None and (not isinstance(weight, (int, float)) or isinstance(weight, bool) or weight < 0):
            raise ValueError(f"regularizers.{name}.weight: {weight!r} is not a weight; allowed: a number >= 0")


def check_output_experiments(config: Mapping[str, Any]) -> None:
    """Every experiment the ``outputs:`` block names exists (else that output would silently not be made)."""
    defined = list(config.get("experiments") or {})
    for output, value in (config.get("outputs") or {}).items():
        for name in experiment_list(value):
            if name not in defined:
                raise ValueError(
                    f"outputs.{output}: experiment {name!r} is not defined in experiments; defined: {', '.join(defined)}"
                )


def _validate_blocks(config: Mapping[str, Any]) -> None:
    for output, names in (config.get("outputs") or {}).items():
        if output not in OUTPUTS:
            raise ValueError(f"outputs.{output}: unknown output; allowed: {', '.join(OUTPUTS)}")
        if not experiment_list(names):
            raise ValueError(f"outputs.{output}: {names!r}; give experiment names like 'E1+E2' or [E1, E2]")
        check_output_experiment_count(output, experiment_list(names), f"outputs.{output}: {names!r}")
    for block in ("table1", "gallery"):
        spec = config.get(block)
        if spec is None:
            continue
        if spec.get("dataset") not in (config.get("datasets") or {}):
            raise ValueError(
                f"{block}.dataset: {spec.get('dataset')!r} is not declared in config datasets; declared: {_names(config, 'datasets')}"
            )
    if config.get("table1") is not None:
        try:
            _check_fraction("poison_rate", config["table1"].get("poison_rate", 0.1), closed=False)
        except _PathError as exc:
            raise ValueError(f"table1.{exc}") from None
    gallery = config.get("gallery")
    if gallery is not None:
        seed = gallery.get("seed", 0)
        if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
            raise ValueError(f"gallery.seed: {seed!r} is not a seed; allowed: whole numbers >= 0")


def _validate_registries(config: Mapping[str, Any]) -> None:
    """Declared names against the package registries (imports the package: torch)."""
    import importlib

    checks = [
        ("datasets", "backdoor_eval.data", "DATASETS", lambda name, spec: (spec or {}).get("kind", name)),
        ("models", "backdoor_eval.models", "MODELS", lambda name, spec: (spec or {}).get("arch") or name),
        ("triggers", "backdoor_eval.triggers", "TRIGGERS", lambda name, spec: (spec or {}).get("kind") or name),
        ("regularizers", "backdoor_eval.regularizers", "REGULARIZERS", lambda name, spec: name),
    ]
    for section, module_name, attribute, registry_name in checks:
        registry = getattr(importlib.import_module(module_name), attribute)
        for name, spec in (config.get(section) or {}).items():
            key = registry_name(name, spec)
            if key not in registry:
                field = {"datasets": ".kind", "models": ".arch", "triggers": ".kind"}.get(section, "")
                raise ValueError(
                    f"{section}.{name}{field}: {key!r} is not registered in {module_name}.{attribute}; "
                    f"registered: {', '.join(registry.names())}"
                )
    _validate_entry_params(config)
    # Training settings as each run gets them (optimizer name, values), once per distinct combination.
    from backdoor_eval.train import TrainConfig

    settings = {}
    for run in union(expand(config)):
        factors = {f.name: getattr(run, f.name) for f in FACTORS if f.train_setting is not None}
        settings.setdefault((run.dataset, run.model, tuple(factors.items())), factors)
    for (dataset, model, _), factors in sorted(settings.items(), key=lambda item: str(item[0])):
        merged = train_params(config, dataset, model, factors)
        try:
            TrainConfig.from_dict(merged)
        except ValueError as exc:
            # Name the config key that set the bad value: the first setting that fails on its own.
            for key in merged:
                try:
                    TrainConfig.from_dict({key: merged[key]})
                except ValueError:
                    raise ValueError(f"{train_key_path(config, dataset, model, key, factors)}: {exc}") from None
            raise ValueError(f"training settings of model {model} on dataset {dataset}: {exc}") from None


def _validate_entry_params(config: Mapping[str, Any]) -> None:
    """Every parameter of every dataset, model, trigger and regularizer entry, checked as its job would
    build it, naming the key: unknown keys, and the values each builder checks (a model on the meta device:
    no memory, no weights). Also the memory a dataset needs to be made, when the reader can say it."""
    import torch

    from backdoor_eval.data import DATASETS
    from backdoor_eval.models import create_model
    from backdoor_eval.regularizers import create_regularizer
    from backdoor_eval.triggers import TRIGGERS

    for name, spec in (config.get("datasets") or {}).items():
        params = dict(spec.get("params") or {})
        dataset = _built(f"datasets.{name}.params", params, DATASETS.create, spec["kind"], **params)
        _check_memory(f"datasets.{name}.params", getattr(dataset, "memory_bytes", None))
    for name in config.get("models") or {}:
        arch, params = model_spec(config, name)
        params = {key: value for key, value in params.items() if key not in ("pretrained", "weights")}
        with torch.device("meta"):
            _built(f"models.{name}.params", params, create_model, arch, num_classes=2, **params)
    for name in config.get("triggers") or {}:
        kind, params = trigger_kind(config, name), trigger_params(config, name)
        where = f"triggers.{name}.params"
        _built(where, params, TRIGGERS.check_params, kind, params, exclude=("alpha",))
        if "fit" not in (TRIGGERS.parameters(kind) or []):
            _built(where, params, TRIGGERS.create, kind, alpha=trigger_default_alpha(config, name), **params)
    for name, spec in (config.get("regularizers") or {}).items():
        params = dict(spec or {})
        _built(f"regularizers.{name}", params, create_regularizer, name, **params)


def _built(where: str, params: Mapping[str, Any], build: Any, *args: Any, **kwargs: Any) -> Any:
    """``build(*args, **kwargs)``, its bad-input errors prefixed with ``where`` and the parameter they are about."""
    from backdoor_eval.registry import params_error_key

    try:
        return build(*args, **kwargs)
    except (TypeError, ValueError) as exc:
        key = params_error_key(exc, params)
        raise ValueError(f"{where}.{key}: {exc}" if key else f"{where}: {exc}") from None


def _check_memory(where: str, memory_bytes: Any) -> None:
    """A dataset that would need more memory to make than this machine has (ingest runs here) is an error."""
    import os

    needed = memory_bytes() if callable(memory_bytes) else None
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if needed is not None and needed > total:
        raise ValueError(
            f"{where}: making this dataset needs about {needed / 2**30:.1f} GiB of memory, more than this "
            f"machine's {total / 2**30:.1f} GiB; allowed: fewer or smaller images"
        )


def train_key_path(
    config: Mapping[str, Any], dataset: str, model: str, key: str, factors: Mapping[str, Any] | None = None
) -> str:
    """The config key that gives ``key`` its value for ``model`` on ``dataset`` (the last block of
    :func:`train_layers` that sets it)."""
    layers = reversed(train_layers(config, dataset, model, factors))
    return next((f"{path}.{key}" for path, block in layers if key in block), f"train.{key}")


def check_poison_counts(
    config: Mapping[str, Any],
    class_counts: Mapping[str, Sequence[int]],
    expanded: Mapping[str, list[Run]] | None = None,
) -> None:
    """Every run poisons at least one training image, for the datasets whose class sizes are known.

    ``class_counts`` maps a dataset name to its images per class (in the
    order of its ``classes``). A run poisons floor(rate x N_t) of its
    poison-train images of the poison class (docs/decisions.md#poison-sampling),
    and N_t follows from the class sizes alone (:func:`backdoor_eval.splits.partition_counts`),
    so a run that would poison none is an error here, before any job, naming
    the experiment, the values and the lowest rate allowed. ``expanded``:
    :func:`expand`'s result, when the caller has it already.
    """
    from backdoor_eval.poison import num_poisoned, zero_poison_message
    from backdoor_eval.splits import partition_counts

    poison_train = {dataset: partition_counts(list(counts))["poison_train"] for dataset, counts in class_counts.items()}
    for name, runs in (expand(config) if expanded is None else expanded).items():
        for run in runs:
            if run.dataset not in poison_train:
                continue
            classes = dataset_classes(config, run.dataset)
            sizes = poison_train[run.dataset]
            if len(sizes) != len(classes):
                raise ValueError(
                    f"datasets.{run.dataset}.classes: {len(classes)} classes declared, but the dataset has "
                    f"{len(sizes)}; allowed: the dataset's class names in label order"
                )
            count = int(sizes[classes.index(run.poison_class)])
            if num_poisoned(run.poison_rate, count) == 0:
                raise ValueError(
                    f"experiments.{name}.poison_rate: dataset {run.dataset}: "
                    + zero_poison_message(run.poison_rate, count, run.poison_class)
                )

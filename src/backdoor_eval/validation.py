"""The config checks a JSON schema cannot make (step 3 of ``backdoor_eval.config``), each naming the key.

Names used by experiments declared in their sections, classes of the
dataset, alpha and poison-rate ranges (through the grid expansion, which
checks every factor value with its config path), the outputs' experiments,
and with ``check_registries`` the package registries: every registry name,
every parameter of every dataset, model, trigger and regularizer entry (each
built as its job would build it), and the training settings of every run.
Also the poison-count check, which needs the class sizes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

from backdoor_eval.configview import ConfigView, ExperimentSpec, names_of, train_layers, view
from backdoor_eval.experiments import (
    EXPERIMENT_KEYS,
    Run,
    _as_list,
    _check_rate,
    _expand_one,
    _is_per_dataset,
    _PathError,
    check_alpha,
    expand,
    union,
)
from backdoor_eval.factors import FACTOR_NAMES, FACTORS, NAME_RE, REQUIRED_FACTORS
from backdoor_eval.names import (
    ALL_CLASSES,
    CLEAN_PHASE,
    EPOCH_OUTPUTS,
    OTHER_CLASSES,
    OUTPUTS,
    PHASES,
    check_output_experiment_count,
    experiment_list,
)


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
        phases = ExperimentSpec.from_entry(name, spec).phases
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


def check_trigger_entry_keys(config: Mapping[str, Any]) -> None:
    """A trigger's parameter written beside an entry's ``kind``, ``alpha`` and ``params`` (where LV's fit
    parameters once were) is named with the place it belongs, before the schema, which would only call
    the key unknown: ``triggers.lv.variance_fraction`` goes under ``triggers.lv.params``."""
    from backdoor_eval.schema import load_schema
    from backdoor_eval.triggers import TRIGGERS, fit_parameters

    entry_keys = load_schema()["properties"]["triggers"]["additionalProperties"]["properties"]
    triggers = config.get("triggers")
    for name, spec in triggers.items() if isinstance(triggers, Mapping) else ():
        kind = spec.get("kind") or name if isinstance(spec, Mapping) else None
        if not isinstance(kind, str) or kind not in TRIGGERS:
            continue  # the schema and the registry check name what is wrong
        accepted = [*(TRIGGERS.parameters(kind) or []), *fit_parameters(kind)]
        for key in spec:
            if key not in entry_keys and key in accepted:
                raise ValueError(
                    f"triggers.{name}.{key}: a parameter of trigger {kind!r} goes under params; "
                    f"write triggers.{name}.params.{key}"
                )


def _validate_sections(config: Mapping[str, Any]) -> None:
    if not NAME_RE.match(str(config.get("name", ""))):
        raise ValueError(f"name: {config.get('name')!r} is not a valid config name; allowed: letters, digits, _ . + -")
    sets = config.get("datasets")
    if not isinstance(sets, Mapping) or not sets:
        raise ValueError("datasets: at least one dataset is required")
    for section in ("datasets", "models", "triggers", "regularizers"):
        for name in config.get(section) or {}:
            if not NAME_RE.match(str(name)):
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
            if not is_valid_class_name(cls):
                raise ValueError(f"datasets.{name}.classes[{i}]: {cls!r} is not a valid class name; {CLASS_NAME_RULE}")
        duplicates = sorted({c for c in classes if classes.count(c) > 1})
        if duplicates:
            raise ValueError(f"datasets.{name}.classes: {duplicates[0]!r} appears twice; class names must be unique")
    for name, spec in (config.get("triggers") or {}).items():
        alpha = (spec or {}).get("alpha")
        if alpha is not None:
            try:
                check_alpha("alpha", alpha)
            except _PathError as exc:
                raise ValueError(f"triggers.{name}.{exc}") from None
    for name, spec in (config.get("models") or {}).items():
        for dataset in (spec or {}).get("train_per_dataset") or {}:
            if dataset not in sets:
                raise ValueError(
                    f"models.{name}.train_per_dataset.{dataset}: not a dataset declared in config datasets; "
                    f"declared: {names_of(config, 'datasets')}"
                )
    for name, spec in (config.get("regularizers") or {}).items():
        weight = (spec or {}).get("weight")
        if weight is not None and (not isinstance(weight, (int, float)) or isinstance(weight, bool) or weight < 0):
            raise ValueError(f"regularizers.{name}.weight: {weight!r} is not a weight; allowed: a number >= 0")


# What a class name may be, and what to do about a dataset whose class folders are named otherwise.
CLASS_NAME_RULE = (
    "allowed: ASCII letters, digits, _ . + - (no '/'), not all digits, not 'all'/'others' (class names are "
    "path segments and command-line words, where digits alone read as a class index). A dataset whose class "
    "folders are named otherwise ('café', '0') must have them renamed (e.g. 'cafe', 'class0') before ingest"
)


def is_valid_class_name(name: Any) -> bool:
    """Whether ``name`` can be declared in a config's ``classes`` (:data:`CLASS_NAME_RULE`)."""
    # All-digit names would read as class indices on the command line.
    return (
        isinstance(name, str)
        and bool(NAME_RE.match(name))
        and name not in (ALL_CLASSES, OTHER_CLASSES)
        and not name.isdigit()
    )


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
        if output in EPOCH_OUTPUTS:
            for name in experiment_list(names):
                if not ((config.get("experiments") or {}).get(name) or {}).get("retrain", False):
                    raise ValueError(f"outputs.{output}: experiment {name!r} is not retrained; it needs retrain: true")
    for block in ("table1", "gallery"):
        spec = config.get(block)
        if spec is None:
            continue
        if spec.get("dataset") not in (config.get("datasets") or {}):
            raise ValueError(
                f"{block}.dataset: {spec.get('dataset')!r} is not declared in config datasets; declared: {names_of(config, 'datasets')}"
            )
    if config.get("table1") is not None:
        try:
            _check_rate("poison_rate", config["table1"].get("poison_rate", 0.1))
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
    config_view = view(config)
    for (dataset, model, _), factors in sorted(settings.items(), key=lambda item: str(item[0])):
        merged = config_view.train_params(dataset, model, factors)
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
    from backdoor_eval.triggers import TRIGGERS, fit_parameters, fitter_of, needs_fit

    for name, spec in (config.get("datasets") or {}).items():
        where = f"datasets.{name}.params"
        params = _keyword_params(where, spec.get("params"))
        dataset = _built(where, params, partial(DATASETS.create, spec["kind"], **params))
        _check_memory(where, getattr(dataset, "memory_bytes", None))
    entries = view(config)
    for name in entries.models:
        arch, params = entries.model_spec(name)
        where = f"models.{name}.params"
        params = _keyword_params(where, {k: v for k, v in params.items() if k not in ("pretrained", "weights")})
        with torch.device("meta"):
            _built(where, params, partial(create_model, arch, num_classes=2, **params))
    for name, trigger in entries.triggers.items():
        kind, where = trigger.kind, f"triggers.{name}.params"
        params = _keyword_params(where, trigger.trigger_params())
        if needs_fit(kind):  # built in its job, with its split's fit; the fit's parameters are checked here
            fit = _keyword_params(where, entries.fit_params(kind))
            _built(where, fit, partial(fitter_of(kind).options, **fit))
            check = partial(TRIGGERS.check_params, kind, params, exclude=("alpha", "fit"), extra=fit_parameters(kind))
            _built(where, params, check)
        else:
            alpha = trigger.default_alpha
            _built(where, params, partial(TRIGGERS.create, kind, alpha=alpha, **params))
    for name, spec in (config.get("regularizers") or {}).items():
        params = _keyword_params(f"regularizers.{name}", spec)
        _built(f"regularizers.{name}", params, partial(create_regularizer, name, **params))


def _keyword_params(where: str, params: Mapping[Any, Any] | None) -> dict[str, Any]:
    """A config entry's parameters, whose keys must be text (they become keyword arguments)."""
    for key in params or {}:
        if not isinstance(key, str):
            raise ValueError(f"{where}.{key}: {key!r} is not a parameter name; allowed: text keys")
    return dict(params or {})


def _built(where: str, params: Mapping[str, Any], build: Any) -> Any:
    """``build()``, its bad-input errors prefixed with ``where`` and the parameter of ``params`` they are about."""
    from backdoor_eval.registry import params_error_key

    try:
        return build()
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
    config: ConfigView | Mapping[str, Any],
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

    config = view(config)
    poison_train = {dataset: partition_counts(list(counts))["poison_train"] for dataset, counts in class_counts.items()}
    poison_val = {dataset: partition_counts(list(counts))["poison_val"] for dataset, counts in class_counts.items()}
    for name, runs in (expand(config) if expanded is None else expanded).items():
        for run in runs:
            if run.dataset not in poison_train:
                continue
            classes = config.dataset_classes(run.dataset)
            sizes = poison_train[run.dataset]
            if len(sizes) != len(classes):
                raise ValueError(
                    f"datasets.{run.dataset}.classes: {len(classes)} classes declared, but the dataset has "
                    f"{len(sizes)}; allowed: the dataset's class names in label order"
                )
            count = int(sizes[classes.index(run.poison_class)])
            if int(poison_val[run.dataset][classes.index(run.poison_class)]) == 0:
                raise ValueError(
                    f"experiments.{name}.poison_class: dataset {run.dataset}: class {run.poison_class!r} has no "
                    f"image in the poison_val set ({class_counts[run.dataset][classes.index(run.poison_class)]} images "
                    "in all, split 76/19/5 then 80/20), so its poisoned validation accuracy cannot be measured; "
                    "allowed: a class with more images"
                )
            if num_poisoned(run.poison_rate, count) == 0:
                raise ValueError(
                    f"experiments.{name}.poison_rate: dataset {run.dataset}: "
                    + zero_poison_message(run.poison_rate, count, run.poison_class)
                )

"""The raw-dict readers the typed view (``backdoor_eval.configview.ConfigView``) replaced, as they were
(commit 9f7dd3a): the oracle of tests/test_configview.py, which checks that the view answers the same."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from backdoor_eval.factors import FACTORS, Run
from backdoor_eval.names import CLEAN_PHASE, NO_REGULARIZER, POISON_PHASE, experiment_list
from backdoor_eval.schema import schema_default

DEFAULT_OUTPUTS: dict[str, list[str]] = {
    name: experiment_list(value) for name, value in schema_default("outputs").items()
}


def datasets(config: Mapping[str, Any]) -> dict[str, Any]:
    return dict(config.get("datasets") or {})


def dataset_classes(config: Mapping[str, Any], dataset: str) -> list[str]:
    """The class names the config declares for ``dataset``, in label order."""
    try:
        return list(config["datasets"][dataset]["classes"])
    except (KeyError, TypeError):
        raise ValueError(
            f"dataset {dataset!r} is not declared in config datasets; declared: {names_of(config, 'datasets')}"
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


def needs_fit(config: Mapping[str, Any], trigger: str) -> bool:
    """Whether the config's trigger ``trigger`` needs its split's fit (its kind declares a ``fitter``,
    ``backdoor_eval.triggers.needs_fit``); an unregistered kind needs none (the checks name it)."""
    from backdoor_eval.triggers import TRIGGERS, needs_fit

    kind = trigger_kind(config, trigger)
    return kind in TRIGGERS and needs_fit(kind)


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


def _entry_params(config: Mapping[str, Any], trigger: str) -> dict[str, Any]:
    spec = (config.get("triggers") or {}).get(trigger) or {}
    return dict(spec.get("params") or {})


def _fit_parameters(config: Mapping[str, Any], trigger: str) -> list[str]:
    from backdoor_eval.triggers import TRIGGERS, fit_parameters

    kind = trigger_kind(config, trigger)
    return fit_parameters(kind) if kind in TRIGGERS else []


def trigger_params(config: Mapping[str, Any], trigger: str) -> dict[str, Any]:
    """Extra keyword parameters of the trigger (``triggers.<name>.params``, e.g. lv ``reading``), less its
    fit's parameters (:func:`fit_params`)."""
    fit_keys = set(_fit_parameters(config, trigger))
    return {key: value for key, value in _entry_params(config, trigger).items() if key not in fit_keys}


def fit_params(config: Mapping[str, Any], kind: str) -> dict[str, Any]:
    """The parameters of fitted trigger ``kind``'s fit (e.g. lv ``variance_fraction``), from the ``params``
    of the config's entries of that kind: every entry of a kind shares its split's one fit, so two entries
    that set one differently are an error naming both."""
    found: dict[str, tuple[str, Any]] = {}
    for name in config.get("triggers") or {}:
        if trigger_kind(config, name) != kind:
            continue
        params = _entry_params(config, name)
        for key in _fit_parameters(config, name):
            if key not in params:
                continue
            if key in found and found[key][1] != params[key]:
                first, value = found[key]
                raise ValueError(
                    f"triggers.{name}.params.{key}: {params[key]!r} differs from triggers.{first}.params.{key}: "
                    f"{value!r}; entries of kind {kind} share one fit per split, so give it once"
                )
            found.setdefault(key, (name, params[key]))
    return {key: value for key, (_, value) in found.items()}


def fit_options(config: Mapping[str, Any], kind: str) -> list[str]:
    """The fit command's options (``backdoor-eval fit-<kind>``) for the config's :func:`fit_params`."""
    from backdoor_eval.triggers import fitter_of

    return fitter_of(kind).options(**fit_params(config, kind))


def model_spec(config: Mapping[str, Any], model: str) -> tuple[str, dict[str, Any]]:
    """``(arch, model_params)`` for the train command: the registry name and its keyword
    arguments, ``pretrained`` and ``weights`` included."""
    try:
        spec = dict(config["models"][model] or {})
    except (KeyError, TypeError):
        raise ValueError(
            f"model {model!r} is not declared in config models; declared: {names_of(config, 'models')}"
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


def names_of(config: Mapping[str, Any], section: str) -> str:
    return ", ".join(config.get(section) or {}) or "(none)"


def declared_names(config: Mapping[str, Any], section: str) -> list[str]:
    """The names a factor's values may take from config ``section``: its keys (for ``triggers`` without a
    block, every registered trigger; ``none`` is always a regularizer)."""
    if section == "triggers":
        return trigger_names(config)
    if section == "regularizers":
        return regularizer_names(config)
    return [str(name) for name in config.get(section) or {}]


def pretraining_settings(config: Mapping[str, Any], name: str) -> dict[str, Any]:
    """``backdoor_eval.pretrain.pretraining_settings`` as it read the raw mapping (its digest names the file)."""
    spec = (config.get("pretraining") or {})[name] or {}
    data = (config.get("datasets") or {}).get(spec.get("dataset")) or {}
    return {
        "dataset": {"kind": data.get("kind"), "params": data.get("params") or {}, "classes": data.get("classes")},
        "arch": spec.get("arch"),
        "params": dict(spec.get("params") or {}),
        "train": dict(spec.get("train") or {}),
        "seed": int(spec.get("seed", 0)),
        "holdout": float(spec.get("holdout", 0.1)),
    }

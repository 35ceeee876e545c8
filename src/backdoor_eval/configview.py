"""The config, read the same way everywhere: a typed, read-only view of each section as the jobs get it.

A completed config (``backdoor_eval.config.prepare_config``: the schema's
defaults filled in, checked) is a plain mapping; :class:`ConfigView` is the
one place that reads it. ``ConfigView.from_config(config)`` (or
:func:`view`) builds it once: frozen dataclasses, one per entry
(:class:`DatasetSpec`, :class:`ModelSpec`, :class:`TriggerSpec`,
:class:`RegularizerSpec`, :class:`OptimizerSpec`, :class:`ExperimentSpec`,
:class:`PretrainingSpec`), and the top-level settings; every nested mapping
is read-only and every list a tuple. Its methods answer what the jobs ask: a
dataset's classes, a trigger entry's registry kind, alpha and parameters (and
a fitted trigger's fit parameters), a model's registry name and builder
parameters, a regularizer's parameters, the training settings of a run (the
``train`` blocks merged, then its training-setting factors' blocks), the split
policy, each experiment's phases and the outputs the config builds. What they
return to be written out (parameters, training settings) are plain dicts and
lists again, the caller's to change.

The module-level functions (``trigger_kind(config, name)``, ...) take the raw
mapping and build a view for each call: for the checks, which read a config
before it is known to be whole. Code that asks many questions builds one view.
Light (no torch): the Snakefile imports it at parse time.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from backdoor_eval.factors import FACTORS, Run
from backdoor_eval.names import CLEAN_PHASE, NO_REGULARIZER, POISON_PHASE, experiment_list
from backdoor_eval.schema import schema_default

# The outputs mapping is the schema's (one definition).
DEFAULT_OUTPUTS: dict[str, list[str]] = {
    name: experiment_list(value) for name, value in schema_default("outputs").items()
}

EMPTY: Mapping[str, Any] = MappingProxyType({})


def freeze(value: Any) -> Any:
    """``value`` with every mapping read-only (``MappingProxyType``) and every list a tuple, all the way down."""
    if isinstance(value, Mapping):
        return MappingProxyType({key: freeze(item) for key, item in value.items()})
    if isinstance(value, (list, tuple)):
        return tuple(freeze(item) for item in value)
    return value


def thaw(value: Any) -> Any:
    """The plain dicts and lists of a :func:`freeze` d value (what goes into a command line or a check)."""
    if isinstance(value, Mapping):
        return {key: thaw(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [thaw(item) for item in value]
    return value


def _block(value: Any) -> Mapping[str, Any]:
    """A config block, frozen; ``null`` or absent is empty."""
    return freeze(value) if value else EMPTY


@dataclass(frozen=True)
class DatasetSpec:
    """``datasets.<name>``: the registry kind, the reader's parameters, the classes in label order, and its
    ``train`` overrides."""

    name: str
    kind: str | None
    classes: tuple[str, ...] | None
    params: Mapping[str, Any] = field(default_factory=lambda: EMPTY)
    train: Mapping[str, Any] = field(default_factory=lambda: EMPTY)

    @classmethod
    def from_entry(cls, name: str, spec: Mapping[str, Any] | None) -> DatasetSpec:
        spec = spec or {}
        classes = spec.get("classes")
        return cls(
            name=name,
            kind=spec.get("kind"),
            classes=None if classes is None else tuple(classes),
            params=_block(spec.get("params")),
            train=_block(spec.get("train")),
        )


@dataclass(frozen=True)
class ModelSpec:
    """``models.<name>``: the registry name (``arch``, else the key), the builder's parameters, the weights it
    starts from (``pretrained``, ``weights``, or a pretraining's backbone, ``init``), its ``train``
    overrides, and per dataset (``train_per_dataset``)."""

    name: str
    arch: str
    params: Mapping[str, Any] = field(default_factory=lambda: EMPTY)
    pretrained: bool = False
    weights: str | None = None
    init: str | None = None
    train: Mapping[str, Any] = field(default_factory=lambda: EMPTY)
    train_per_dataset: Mapping[str, Mapping[str, Any]] = field(default_factory=lambda: EMPTY)

    @classmethod
    def from_entry(cls, name: str, spec: Mapping[str, Any] | None) -> ModelSpec:
        spec = spec or {}
        return cls(
            name=name,
            arch=str(spec.get("arch") or name),
            params=_block(spec.get("params")),
            pretrained=bool(spec.get("pretrained", False)),
            weights=spec.get("weights"),
            init=spec.get("init"),
            train=_block(spec.get("train")),
            train_per_dataset=_block(spec.get("train_per_dataset")),
        )

    def builder_params(self) -> dict[str, Any]:
        """The registry builder's keyword arguments, ``pretrained`` and ``weights`` included (a new dict)."""
        return {**thaw(self.params), "pretrained": self.pretrained, "weights": self.weights}


@dataclass(frozen=True)
class TriggerSpec:
    """``triggers.<name>``: its registry kind (``kind``, else the name), its default alpha when the config
    sets one, and its ``params`` (the trigger's, and a fitted trigger's fit parameters). A trigger the
    config does not declare (no ``triggers:`` block) is its registry entry with its own defaults."""

    name: str
    kind: str
    alpha: float | None = None
    params: Mapping[str, Any] = field(default_factory=lambda: EMPTY)
    kind_given: bool = False  # the entry names its kind (errors then point at triggers.<name>.kind)

    @classmethod
    def from_entry(cls, name: str, spec: Mapping[str, Any] | None) -> TriggerSpec:
        spec = spec or {}
        return cls(
            name=name,
            kind=str(spec.get("kind") or name),
            alpha=spec.get("alpha"),
            params=_block(spec.get("params")),
            kind_given=bool(spec.get("kind")),
        )

    @property
    def registered(self) -> bool:
        from backdoor_eval.triggers import TRIGGERS

        return self.kind in TRIGGERS

    @property
    def needs_fit(self) -> bool:
        """Whether the trigger needs its split's fit (its kind declares a ``fitter``,
        ``backdoor_eval.triggers.needs_fit``); an unregistered kind needs none (the checks name it)."""
        from backdoor_eval.triggers import needs_fit

        return self.registered and needs_fit(self.kind)

    @property
    def default_alpha(self) -> float:
        """The trigger's default transparency: the entry's ``alpha``, else the trigger's own."""
        if self.alpha is not None:
            return float(self.alpha)
        from backdoor_eval.triggers import TRIGGERS

        if self.registered:
            return float(TRIGGERS.get(self.kind).default_alpha)
        where = f"triggers.{self.name}.kind" if self.kind_given else f"triggers.{self.name}"
        raise ValueError(
            f"{where}: {self.kind!r} is not registered in backdoor_eval.triggers.TRIGGERS; "
            f"registered: {', '.join(TRIGGERS.names())}"
        )

    @property
    def fit_parameters(self) -> list[str]:
        """The names of its kind's fit parameters (none for an unregistered kind)."""
        from backdoor_eval.triggers import fit_parameters

        return fit_parameters(self.kind) if self.registered else []

    def trigger_params(self) -> dict[str, Any]:
        """Extra keyword parameters of the trigger (e.g. lv ``reading``), less its fit's parameters."""
        fit_keys = set(self.fit_parameters)
        return {key: thaw(value) for key, value in self.params.items() if key not in fit_keys}


@dataclass(frozen=True)
class RegularizerSpec:
    """``regularizers.<name>``: its keyword parameters (``weight`` and its hyper-parameters)."""

    name: str
    params: Mapping[str, Any] = field(default_factory=lambda: EMPTY)


@dataclass(frozen=True)
class OptimizerSpec:
    """``optimizers.<name>``: the ``train`` keys its runs get (the optimizer is the name unless they say)."""

    name: str
    train: Mapping[str, Any] = field(default_factory=lambda: EMPTY)


@dataclass(frozen=True)
class ExperimentSpec:
    """``experiments.<name>``: its factor lists as given (``grid``: factor -> value, list or per-dataset
    mapping; the grid expansion, ``backdoor_eval.experiments``, reads it), and what it reports."""

    name: str
    grid: Mapping[str, Any]
    description: str = ""
    retrain: bool = False
    phases: tuple[str, ...] = (POISON_PHASE,)
    analyses: tuple[str, ...] = ()
    filter_retrain: tuple[str, ...] = ()

    @classmethod
    def from_entry(cls, name: str, spec: Mapping[str, Any] | None) -> ExperimentSpec:
        spec = spec or {}
        retrain = bool(spec.get("retrain", False))
        default = (POISON_PHASE, CLEAN_PHASE) if retrain else (POISON_PHASE,)
        return cls(
            name=name,
            grid=freeze(spec),
            description=spec.get("description", ""),
            retrain=retrain,
            phases=tuple(spec.get("phases") or default),
            analyses=tuple(spec.get("analyses") or ()),
            filter_retrain=tuple(spec.get("filter_retrain") or ()),
        )


@dataclass(frozen=True)
class PretrainingSpec:
    """``pretraining.<name>``: the backbone the workflow trains once (``backdoor_eval.pretrain``)."""

    name: str
    dataset: str
    arch: str
    params: Mapping[str, Any] = field(default_factory=lambda: EMPTY)
    train: Mapping[str, Any] = field(default_factory=lambda: EMPTY)
    seed: int = 0
    holdout: float | None = None

    @classmethod
    def from_entry(cls, name: str, spec: Mapping[str, Any] | None) -> PretrainingSpec:
        spec = spec or {}
        return cls(
            name=name,
            dataset=spec.get("dataset"),
            arch=spec.get("arch"),
            params=_block(spec.get("params")),
            train=_block(spec.get("train")),
            seed=spec.get("seed", 0),
            holdout=spec.get("holdout"),
        )


def _entries(config: Mapping[str, Any], section: str, make: Any) -> Mapping[str, Any]:
    """A section's entries, each made by ``make(name, entry)``; what is not a mapping reads as empty (the
    checks, which read the raw config, name it)."""
    entries = config.get(section)
    if not isinstance(entries, Mapping):
        return EMPTY
    return MappingProxyType(
        {name: make(name, spec if isinstance(spec, Mapping) else None) for name, spec in entries.items()}
    )


@dataclass(frozen=True)
class ConfigView:
    """A completed config, typed and read-only. Build it with :meth:`from_config` (or :func:`view`)."""

    name: str | None
    device: str | None
    split: str
    keep_models: bool
    gpu_lock_dir: str | None
    jobs_per_gpu: int | None
    train: Mapping[str, Any]
    datasets: Mapping[str, DatasetSpec]
    models: Mapping[str, ModelSpec]
    triggers: Mapping[str, TriggerSpec]  # the entries the config declares (see :meth:`trigger`)
    regularizers: Mapping[str, RegularizerSpec]
    optimizers: Mapping[str, OptimizerSpec]
    experiments: Mapping[str, ExperimentSpec]
    pretraining: Mapping[str, PretrainingSpec]
    analyses: Mapping[str, Mapping[str, Any]]
    table1: Mapping[str, Any] | None
    gallery: Mapping[str, Any] | None
    resources: Mapping[str, Mapping[str, Any]]
    outputs_given: Mapping[str, Any] | None  # ``outputs:`` as written (None: the schema's)
    sections: Mapping[str, Any]  # every top-level section, frozen: what a factor's section declares

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> ConfigView:
        """The view of ``config``; a view is returned as it is. Every section may be absent (the checks read
        a config before it is known to be whole)."""
        if isinstance(config, ConfigView):
            return config
        outputs_given = config.get("outputs")
        return cls(
            name=config.get("name"),
            device=config.get("device"),
            split=str(config.get("split") or schema_default("split")),
            keep_models=bool(config.get("keep_models", False)),
            gpu_lock_dir=config.get("gpu_lock_dir"),
            jobs_per_gpu=config.get("jobs_per_gpu"),
            train=_block(config.get("train")),
            datasets=_entries(config, "datasets", DatasetSpec.from_entry),
            models=_entries(config, "models", ModelSpec.from_entry),
            triggers=_entries(config, "triggers", TriggerSpec.from_entry),
            regularizers=_entries(config, "regularizers", lambda name, spec: RegularizerSpec(name, _block(spec))),
            optimizers=_entries(config, "optimizers", lambda name, spec: OptimizerSpec(name, _block(spec))),
            experiments=_entries(config, "experiments", ExperimentSpec.from_entry),
            pretraining=_entries(config, "pretraining", PretrainingSpec.from_entry),
            analyses=_entries(config, "analyses", lambda name, spec: _block(spec)),
            table1=freeze(config["table1"]) if config.get("table1") else None,
            gallery=freeze(config["gallery"]) if config.get("gallery") else None,
            resources=_block(config.get("resources")),
            outputs_given=None if outputs_given is None else freeze(outputs_given),
            sections=freeze(dict(config)),
        )

    # ------------------------------------------------------------ names

    def names_of(self, section: str) -> str:
        """The names config ``section`` declares, for a message: ``a, b`` or ``(none)``."""
        return ", ".join(self.sections.get(section) or {}) or "(none)"

    @property
    def trigger_names(self) -> list[str]:
        """The config's triggers; without a ``triggers:`` block, every registered trigger."""
        if self.triggers:
            return list(self.triggers)
        from backdoor_eval.triggers import TRIGGERS

        return TRIGGERS.names()

    @property
    def regularizer_names(self) -> list[str]:
        """The config's regularizers; ``none`` always is one."""
        names = list(self.regularizers)
        return names if NO_REGULARIZER in names else [NO_REGULARIZER, *names]

    def declared_names(self, section: str) -> list[str]:
        """The names a factor's values may take from config ``section``: its keys (for ``triggers`` without a
        block, every registered trigger; ``none`` is always a regularizer)."""
        if section == "triggers":
            return self.trigger_names
        if section == "regularizers":
            return self.regularizer_names
        return [str(name) for name in self.sections.get(section) or {}]

    # ------------------------------------------------------------ entries

    def dataset(self, name: str) -> DatasetSpec:
        """Dataset ``name``; one the config does not declare (with its classes) is an error naming the declared."""
        spec = self.datasets.get(name)
        if spec is None or spec.classes is None:
            raise ValueError(
                f"dataset {name!r} is not declared in config datasets; declared: {self.names_of('datasets')}"
            )
        return spec

    def dataset_classes(self, name: str) -> list[str]:
        """The class names the config declares for dataset ``name``, in label order."""
        return list(self.dataset(name).classes)

    def model(self, name: str) -> ModelSpec:
        spec = self.models.get(name)
        if spec is None:
            raise ValueError(f"model {name!r} is not declared in config models; declared: {self.names_of('models')}")
        return spec

    def model_spec(self, name: str) -> tuple[str, dict[str, Any]]:
        """``(arch, model_params)`` for the train command: the registry name and its keyword arguments,
        ``pretrained`` and ``weights`` included."""
        spec = self.model(name)
        return spec.arch, spec.builder_params()

    def trigger(self, name: str) -> TriggerSpec:
        """Trigger ``name``: the config's entry, else the registered trigger of that name with its defaults."""
        return self.triggers.get(name) or TriggerSpec(name=name, kind=name)

    def regularizer_params(self, name: str) -> dict[str, Any]:
        """Keyword parameters of regularizer ``name`` (``weight`` and its hyper-parameters)."""
        spec = self.regularizers.get(name)
        if spec is None and name != NO_REGULARIZER:
            raise ValueError(
                f"regularizer {name!r} is not declared in config regularizers; "
                f"declared: {', '.join(self.regularizer_names)}"
            )
        return thaw(spec.params) if spec else {}

    def fit_params(self, kind: str) -> dict[str, Any]:
        """The parameters of fitted trigger ``kind``'s fit (e.g. lv ``variance_fraction``), from the ``params``
        of the config's entries of that kind: every entry of a kind shares its split's one fit, so two entries
        that set one differently are an error naming both."""
        found: dict[str, tuple[str, Any]] = {}
        for name, spec in self.triggers.items():
            if spec.kind != kind:
                continue
            for key in spec.fit_parameters:
                if key not in spec.params:
                    continue
                value = thaw(spec.params[key])
                if key in found and found[key][1] != value:
                    first, given = found[key]
                    raise ValueError(
                        f"triggers.{name}.params.{key}: {value!r} differs from triggers.{first}.params.{key}: "
                        f"{given!r}; entries of kind {kind} share one fit per split, so give it once"
                    )
                found.setdefault(key, (name, value))
        return {key: value for key, (_, value) in found.items()}

    def fit_options(self, kind: str) -> list[str]:
        """The fit command's options (``backdoor-eval fit-<kind>``) for the config's :meth:`fit_params`."""
        from backdoor_eval.triggers import fitter_of

        return fitter_of(kind).options(**self.fit_params(kind))

    # ------------------------------------------------------------ runs

    def split_of(self, run: Run) -> str:
        """The split ``run`` trains on under the config's split policy."""
        return run.split(self.split)

    def poison_id(self, run: Run) -> str:
        """The poisoned set ``run`` trains on under the config's split policy."""
        return run.poison_id(self.split)

    def train_layers(
        self, dataset: str, model: str, factors: Mapping[str, Any] | None = None
    ) -> list[tuple[str, dict[str, Any]]]:
        """The config blocks that set ``model``'s training on ``dataset``, as (key path, block), later ones
        winning: ``train``, ``datasets.<d>.train``, ``models.<m>.train``, ``models.<m>.train_per_dataset.<d>``,
        then for a run (``factors``: its factor values) each training-setting factor off its default: its
        value, and its block in the factor's config section (e.g. ``optimizers.<name>``)."""
        data = self.datasets.get(dataset)
        spec = self.models.get(model)
        layers = [
            ("train", self.train),
            (f"datasets.{dataset}.train", data.train if data else EMPTY),
            (f"models.{model}.train", spec.train if spec else EMPTY),
            (
                f"models.{model}.train_per_dataset.{dataset}",
                (spec.train_per_dataset.get(dataset) or EMPTY) if spec else EMPTY,
            ),
        ]
        for factor in FACTORS:
            value = (factors or {}).get(factor.name, factor.default)
            if factor.train_setting is None or value == factor.default:
                continue
            block = ((self.sections.get(factor.section) or EMPTY) if factor.section else EMPTY).get(value) or EMPTY
            layers.append((f"{factor.section}.{value}", {factor.train_setting: value, **block}))
        return [(path, thaw(block)) for path, block in layers]

    def train_params(self, dataset: str, model: str, factors: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Training settings of ``model`` on ``dataset`` (for a run: ``factors``, its factor values): the blocks
        of :meth:`train_layers` merged, later keys winning (e.g. a model's input size on one dataset)."""
        merged: dict[str, Any] = {}
        for _, block in self.train_layers(dataset, model, factors):
            merged.update(block)
        return merged

    def run_train_params(self, run: Run) -> dict[str, Any]:
        """The training settings of ``run`` (the ``--train-params`` of its train and retrain jobs)."""
        return self.train_params(run.dataset, run.model, run.values())

    # ------------------------------------------------------------ experiments and outputs

    @property
    def experiment_phases(self) -> dict[str, list[str]]:
        """Phases each experiment reports: ``phases:`` if given, else poison (+ clean when ``retrain``)."""
        return {name: list(spec.phases) for name, spec in self.experiments.items()}

    @property
    def outputs(self) -> dict[str, list[str]]:
        """Tables/figures built from experiments whose experiments all exist in the config."""
        mapping = DEFAULT_OUTPUTS if self.outputs_given is None else self.outputs_given
        present = {}
        for output, names in mapping.items():
            names = experiment_list(names)
            if names and all(name in self.experiments for name in names):
                present[output] = names
        return present


def view(config: Mapping[str, Any] | ConfigView) -> ConfigView:
    """The typed view of ``config`` (a view is returned as it is). Build it once where many questions are
    asked: the view does not follow later changes to the mapping."""
    return ConfigView.from_config(config)


# The functions of the raw mapping, each a view's answer (a view of the config as it is now).


def dataset_classes(config: Mapping[str, Any], dataset: str) -> list[str]:
    """The class names the config declares for ``dataset``, in label order."""
    return view(config).dataset_classes(dataset)


def trigger_names(config: Mapping[str, Any]) -> list[str]:
    """The config's triggers; without a ``triggers:`` block, every registered trigger."""
    return view(config).trigger_names


def regularizer_names(config: Mapping[str, Any]) -> list[str]:
    return view(config).regularizer_names


def trigger_kind(config: Mapping[str, Any], trigger: str) -> str:
    """The registry name of the config's trigger ``trigger`` (``triggers.<name>.kind``, else the name)."""
    return view(config).trigger(trigger).kind


def needs_fit(config: Mapping[str, Any], trigger: str) -> bool:
    """Whether the config's trigger ``trigger`` needs its split's fit (:attr:`TriggerSpec.needs_fit`)."""
    return view(config).trigger(trigger).needs_fit


def trigger_default_alpha(config: Mapping[str, Any], trigger: str) -> float:
    """The trigger's default transparency: config ``triggers.<name>.alpha``, else the trigger's own."""
    return view(config).trigger(trigger).default_alpha


def trigger_params(config: Mapping[str, Any], trigger: str) -> dict[str, Any]:
    """Extra keyword parameters of the trigger (``triggers.<name>.params``, e.g. lv ``reading``), less its
    fit's parameters (:func:`fit_params`)."""
    return view(config).trigger(trigger).trigger_params()


def fit_params(config: Mapping[str, Any], kind: str) -> dict[str, Any]:
    """The parameters of fitted trigger ``kind``'s fit (:meth:`ConfigView.fit_params`)."""
    return view(config).fit_params(kind)


def fit_options(config: Mapping[str, Any], kind: str) -> list[str]:
    """The fit command's options (``backdoor-eval fit-<kind>``) for the config's :func:`fit_params`."""
    return view(config).fit_options(kind)


def model_spec(config: Mapping[str, Any], model: str) -> tuple[str, dict[str, Any]]:
    """``(arch, model_params)`` for the train command: the registry name and its keyword
    arguments, ``pretrained`` and ``weights`` included."""
    return view(config).model_spec(model)


def regularizer_params(config: Mapping[str, Any], regularizer: str) -> dict[str, Any]:
    """Keyword parameters of the regularizer (``weight`` and its hyper-parameters)."""
    return view(config).regularizer_params(regularizer)


def split_policy(config: Mapping[str, Any]) -> str:
    """``split:`` of the config: ``per-run`` (the paper's) or ``shared``."""
    return view(config).split


def split_of(config: Mapping[str, Any], run: Run) -> str:
    """The split ``run`` trains on under the config's split policy."""
    return view(config).split_of(run)


def train_layers(
    config: Mapping[str, Any], dataset: str, model: str, factors: Mapping[str, Any] | None = None
) -> list[tuple[str, Mapping[str, Any]]]:
    """The config blocks that set ``model``'s training on ``dataset`` (:meth:`ConfigView.train_layers`)."""
    return view(config).train_layers(dataset, model, factors)


def train_params(
    config: Mapping[str, Any], dataset: str, model: str, factors: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Training settings of ``model`` on ``dataset`` (:meth:`ConfigView.train_params`)."""
    return view(config).train_params(dataset, model, factors)


def run_train_params(config: Mapping[str, Any], run: Run) -> dict[str, Any]:
    """The training settings of ``run`` (the ``--train-params`` of its train and retrain jobs)."""
    return view(config).run_train_params(run)


def experiment_phases(config: Mapping[str, Any]) -> dict[str, list[str]]:
    """Phases each experiment reports: ``phases:`` if given, else poison (+ clean when ``retrain``)."""
    return view(config).experiment_phases


def outputs(config: Mapping[str, Any]) -> dict[str, list[str]]:
    """Tables/figures built from experiments whose experiments all exist in the config."""
    return view(config).outputs


def names_of(config: Mapping[str, Any], section: str) -> str:
    return view(config).names_of(section)


def declared_names(config: Mapping[str, Any], section: str) -> list[str]:
    """The names a factor's values may take from config ``section`` (:meth:`ConfigView.declared_names`)."""
    return view(config).declared_names(section)

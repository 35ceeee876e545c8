"""A run's factors, each declared once, and the run identity derived from them.

A run is one point of an experiment grid (docs/decisions.md#experiment-grid).
Each of its parameters, a *factor*, is one :class:`Factor` in :data:`FACTORS`:
its name, type, default, wildcard pattern and path segment. Everything that
names, parses or groups runs derives from these declarations:

- :class:`Run`, the run identity (one field per factor), and its ``run_id``
  (the run's relative output path, :data:`RUN_ID_TEMPLATE`) and
  ``poison_id`` (its poisoned set's path, :data:`POISON_ID_TEMPLATE`);
- :data:`WILDCARD_CONSTRAINTS` and :data:`RUN_ID_PATTERN` (the Snakemake
  wildcards, ``workflow/rules/common.smk``);
- :func:`typed_row` (the type of each factor column of a result row);
- the experiment keys and their defaults (``backdoor_eval.experiments``;
  the schema's copies are checked against them by ``tests/test_factors.py``);
- the group-bys of tables and figures, which name every factor they average
  over (``backdoor_eval.tables.group_runs``).

Adding a factor is one declaration here and its key in the schema's
``experiment``. A factor added after runs were published declares
``path_omits_default=True``: at its default value the run id, and so the run's
split (``split: per-run`` draws it from the run id) and its numbers, stay what
they were; other values add its segment after the others. A factor whose value
is a training setting names it (``train_setting``); the values an experiment
lists are then declared in the config section ``section``, each a block of
training settings (e.g. ``optimizers: {sgd: {lr: 0.01}}``).

Light (no torch, no pandas): the Snakefile imports it at parse time.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, make_dataclass
from typing import Any

from backdoor_eval import seeding
from backdoor_eval.names import (
    ALL_CLASSES,
    MANY_TO_ONE,
    NO_REGULARIZER,
    PER_RUN_SPLIT,
    SHARED_SPLIT,
    SPLIT_POLICIES,
    STRATEGIES,
)

# Path text of names and numbers (names: config keys and class names; numbers: repr(float)).
NAME = r"[A-Za-z0-9_][A-Za-z0-9_.+-]*"
NUMBER = r"[0-9][0-9.e+-]*"
NAME_RE = re.compile(rf"^{NAME}$")
# A factor value meaning "what the config gives elsewhere": the trigger's alpha, the training settings' optimizer.
DEFAULT = "default"


@dataclass(frozen=True)
class Factor:
    """One run parameter: what an experiment lists, what a run holds, and how its path spells it."""

    name: str
    type: Callable[[Any], Any]  # str, float or int: converts path text and row values
    default: Any  # the value of an experiment that omits it; None: the experiment must give it
    pattern: str  # regex of its text in a path (a Snakemake wildcard constraint)
    segment: str  # its folder in the run id, ``{name}`` standing for the value
    section: str | None = None  # the config section that declares its values (models, triggers, ...)
    poisoning: bool = False  # part of the poisoned set's identity (the poison id)
    path_omits_default: bool = False  # added after runs were published: no segment at the default
    train_setting: str | None = None  # the training setting (TrainConfig field) the value sets

    def text(self, value: Any) -> str:
        """The value as its path spells it (numbers as ``repr(float)``: ``1.0``, ``0.05``)."""
        return repr(float(value)) if self.type is float else str(self.type(value))

    def segment_of(self, value: Any) -> str:
        return self.segment.replace("{" + self.name + "}", self.text(value))


FACTORS: tuple[Factor, ...] = (
    Factor("dataset", str, None, NAME, "{dataset}", section="datasets", poisoning=True),
    Factor("model", str, None, NAME, "{model}", section="models"),
    Factor("trigger", str, None, NAME, "{trigger}", section="triggers", poisoning=True),
    # DEFAULT: the trigger's default alpha (config triggers.<t>.alpha, else the trigger's own).
    Factor("alpha", float, DEFAULT, NUMBER, "a{alpha}", poisoning=True),
    Factor("strategy", str, MANY_TO_ONE, "|".join(STRATEGIES), "{strategy}", poisoning=True),
    Factor("poison_class", str, ALL_CLASSES, NAME, "t{poison_class}", poisoning=True),
    Factor("source", str, ALL_CLASSES, NAME, "s{source}", poisoning=True),
    Factor("poison_rate", float, 0.1, NUMBER, "r{poison_rate}", poisoning=True),
    Factor("regularizer", str, NO_REGULARIZER, NAME, "{regularizer}", section="regularizers"),
    Factor("seed", int, 0, "[0-9]+", "seed{seed}"),
    # Beyond the paper (its future work): the optimizer. DEFAULT: the training settings' (train: optimizer);
    # any other value names a block of training settings in config optimizers (each its own learning rate).
    Factor(
        "optimizer",
        str,
        DEFAULT,
        NAME,
        "opt-{optimizer}",
        section="optimizers",
        path_omits_default=True,
        train_setting="optimizer",
    ),
)
FACTOR_NAMES: tuple[str, ...] = tuple(factor.name for factor in FACTORS)
FACTOR_BY_NAME: dict[str, Factor] = {factor.name: factor for factor in FACTORS}
# The experiment keys every experiment must give, and the defaults of the others.
REQUIRED_FACTORS: tuple[str, ...] = tuple(factor.name for factor in FACTORS if factor.default is None)
FACTOR_DEFAULTS: dict[str, Any] = {factor.name: factor.default for factor in FACTORS if factor.default is not None}


def _check_declarations() -> None:
    for factor in FACTORS:
        if factor.segment.count("{") != 1 or "{" + factor.name + "}" not in factor.segment:
            raise ValueError(f"factor {factor.name}: segment {factor.segment!r} must hold {{{factor.name}}} once")
        if factor.path_omits_default and (factor.poisoning or factor.default is None):
            # The poison rule's wildcards have one segment per poisoning factor.
            raise ValueError(f"factor {factor.name}: only a non-poisoning factor with a default can omit its segment")
    added = [factor.path_omits_default for factor in FACTORS]
    if added != sorted(added):
        # Their segments follow the others, and as Run fields they have defaults, so they come last.
        raise ValueError("factors that omit their segment at the default must be declared after the others")


_check_declarations()

# The run id: the segments of the factors every run id has, then those of the added factors off their default.
RUN_ID_TEMPLATE = "/".join(factor.segment for factor in FACTORS if not factor.path_omits_default)
# A poisoned set: the poisoning factors and the split it was drawn from
# ({split}: backdoor_eval.seeding.split_id; "seed<N>" when shared per seed).
POISON_ID_TEMPLATE = "/".join(factor.segment for factor in FACTORS if factor.poisoning) + "/{split}"


def _segment_regex(factor: Factor, capture: bool) -> str:
    value = f"(?P<{factor.name}>{factor.pattern})" if capture else f"(?:{factor.pattern})"
    prefix, suffix = factor.segment.split("{" + factor.name + "}")
    return re.escape(prefix) + value + re.escape(suffix)


def _run_id_regex(capture: bool) -> str:
    fixed = "/".join(_segment_regex(f, capture) for f in FACTORS if not f.path_omits_default)
    added = "".join(f"(?:/{_segment_regex(f, capture)})?" for f in FACTORS if f.path_omits_default)
    return fixed + added


# The ``{run}`` wildcard of the workflow's run rules: any run id.
RUN_ID_PATTERN = _run_id_regex(capture=False)
_RUN_ID_RE = re.compile(f"^{_run_id_regex(capture=True)}$")
# The workflow's wildcards: a run (its run id), and a poisoned set's factors and split.
WILDCARD_CONSTRAINTS: dict[str, str] = {
    "run": RUN_ID_PATTERN,
    **{factor.name: factor.pattern for factor in FACTORS if factor.poisoning},
    "split": seeding.SPLIT_ID_PATTERN,
}


def format_number(value: float) -> str:
    """Minimal text of a float as used in paths: ``repr(float)`` (``1.0``, ``0.05``)."""
    return repr(float(value))


def added_factor_defaults() -> dict[str, Any]:
    """The factors added after runs were published (``path_omits_default``) and their defaults."""
    return {factor.name: factor.default for factor in FACTORS if factor.path_omits_default}


def typed_row(values: Mapping[str, Any]) -> dict[str, Any]:
    """The factors of ``values`` (path text, wildcards or row cells) converted to their declared types.

    An added factor (``path_omits_default``) that ``values`` lacks takes its
    default: rows and run ids made before it existed are runs at its default.
    """
    typed = {}
    for factor in FACTORS:
        if factor.name in values and values[factor.name] is not None:
            typed[factor.name] = factor.type(values[factor.name])
        elif factor.path_omits_default:
            typed[factor.name] = factor.default
        else:
            raise ValueError(f"run parameters lack {factor.name!r}; required: {', '.join(FACTOR_NAMES)}")
    return typed


class _RunIdentity:
    """The methods of :class:`Run`; its fields are the factors."""

    def values(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}  # type: ignore[arg-type]

    def _path_fields(self) -> dict[str, str]:
        return {factor.name: factor.text(getattr(self, factor.name)) for factor in FACTORS}

    @property
    def run_id(self) -> str:
        """The run's relative output path (the shared results contract)."""
        path = RUN_ID_TEMPLATE.format(**self._path_fields())
        for factor in FACTORS:
            value = getattr(self, factor.name)
            if factor.path_omits_default and value != factor.default:
                path += "/" + factor.segment_of(value)
        return path

    def split(self, policy: str) -> str:
        """The split the run trains on (docs/decisions.md#partitions): its own, or its seed's.

        ``per-run``: drawn from the run's identity and seed, so runs that
        differ in any factor get independent splits and poison draws (the
        paper's section 3). ``shared``: one split per seed for every run.
        """
        seed = self.seed  # type: ignore[attr-defined]
        if policy == PER_RUN_SPLIT:
            return seeding.split_id(seed, self.run_id)
        if policy == SHARED_SPLIT:
            return seeding.split_id(seed)
        raise ValueError(f"split policy {policy!r} is unknown; allowed: {', '.join(SPLIT_POLICIES)}")

    def poison_id(self, policy: str) -> str:
        """The relative path of the run's poisoned overlay (shared by every run of the same split and poisoning)."""
        return POISON_ID_TEMPLATE.format(**self._path_fields(), split=self.split(policy))

    def params(self) -> dict[str, Any]:
        """The run parameters, typed (alpha and poison_rate float, seed int)."""
        return self.values()

    def identity(self) -> dict[str, Any]:
        """The parameters its run id spells: every factor but those added later that are at their default
        (what the workflow passes to jobs, so that a job made before such a factor existed is not redone)."""
        return {
            factor.name: getattr(self, factor.name)
            for factor in FACTORS
            if not (factor.path_omits_default and getattr(self, factor.name) == factor.default)
        }

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> Run:
        """Build a run from path strings or typed values (e.g. a result row)."""
        return cls(**typed_row(values))  # type: ignore[call-arg]

    @classmethod
    def from_run_id(cls, run_id: str) -> Run:
        """Inverse of :attr:`run_id`."""
        match = _RUN_ID_RE.match(str(run_id))
        if match is None:
            raise ValueError(f"run_id {run_id!r} does not match {RUN_ID_TEMPLATE} (then {', '.join(_added())})")
        return cls.from_mapping({key: value for key, value in match.groupdict().items() if value is not None})


def _added() -> list[str]:
    return [f"optional /{f.segment}" for f in FACTORS if f.path_omits_default] or ["nothing"]


# One training run: the parameters that name its output folder. A frozen dataclass with one field per
# factor, in declaration order (the added factors with their defaults); build it with keywords
# (Run(dataset=..., ...)) or Run.from_mapping.
Run = make_dataclass(
    "Run",
    [
        (factor.name, factor.type, field(default=factor.default))
        if factor.path_omits_default
        else (factor.name, factor.type)
        for factor in FACTORS
    ],
    bases=(_RunIdentity,),
    frozen=True,
)
Run.__module__ = __name__
Run.__doc__ = "One training run: one field per factor of :data:`FACTORS` (its identity and output path)."

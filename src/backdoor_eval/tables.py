"""The paper's tables as pure functions of the tidy results (docs/decisions.md#experiment-grid).

Every table is built from ``runs.parquet`` (one row per experiment x run x
phase, written by ``backdoor-eval aggregate``): select an experiment and a
phase, group, reduce, and lay the result out like the paper. Table 1 is the
exception: it is a function of class counts only (eqs. 8-9, via
:func:`backdoor_eval.poison.poison_stats`).

- :func:`table1`: poison statistics (Table 1).
- :func:`table2`: adversarial success before/after clean retraining (Table 2).
- :func:`table3`: poisoned/clean validation accuracy before/after (Table 3).
- :func:`table4`: accuracy, one-to-one vs many-to-one (Table 4).
- :func:`table5`: adversarial success, one-to-one vs many-to-one (Table 5).
- :func:`combine_runs`: the pure half of ``backdoor-eval aggregate``.
- :func:`write_table`: a ``.csv`` (numbers at full precision) and a ``.md``
  (rounded, paper layout) at the paths given, both atomic.

Display names (``bs`` -> ``Square``, ...) only touch the layout; a trigger,
model or dataset without one is shown under its own name, after the paper's.
Triggers are named and ordered by their registry (``backdoor_eval.triggers``:
each class's ``title``, in registration order), so a new trigger needs no
edit here.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from backdoor_eval.factors import FACTOR_NAMES, added_factor_defaults
from backdoor_eval.io import atomic_path
from backdoor_eval.names import CLEAN_PHASE, MANY_TO_ONE, ONE_TO_ONE, PHASES, POISON_PHASE, STRATEGIES
from backdoor_eval.triggers import TRIGGERS, trigger_title

if TYPE_CHECKING:  # pandas is imported lazily so the CLI's --help stays fast
    import pandas as pd

__all__ = [
    "DATASET_ORDER",
    "DISPLAY_NAMES",
    "MODEL_ORDER",
    "REGULARIZER_ORDER",
    "STATISTICS",
    "TABLE_NOTES",
    "OPTIMIZER_ORDER",
    "combine_runs",
    "display_name",
    "flatten_columns",
    "group_runs",
    "ordered",
    "select_runs",
    "table1",
    "table1_decimals",
    "table2",
    "table3",
    "table4",
    "table5",
    "trigger_order",
    "table_optimizer",
    "optimizer_means",
    "to_markdown",
    "without_untrained",
    "write_table",
]

# The paper's orders (Tables 2-5, Figs. 4-7); anything else follows, sorted.
DATASET_ORDER = ("flowers", "cifar10")
MODEL_ORDER = ("resnet50", "nasnet_large", "nasnet_mobile")
REGULARIZER_ORDER = ("none", "logit_squeeze", "mixup", "contrastive", "snnl")
OPTIMIZER_ORDER = ("default", "sgd", "adam", "adamw")
DISPLAY_NAMES: dict[str, dict[str, str]] = {
    "dataset": {"flowers": "Flowers", "cifar10": "CIFAR-10"},
    "model": {"resnet50": "ResNet50", "nasnet_large": "NasNet", "nasnet_mobile": "NasNet Mobile"},
    "regularizer": {
        "none": "None",
        "logit_squeeze": "Logit Squeezing",
        "mixup": "Manifold Mixup",
        "contrastive": "Contrastive",
        "snnl": "SNNL",
    },
    "optimizer": {"sgd": "SGD", "adam": "Adam", "adamw": "AdamW"},
    "strategy": {ONE_TO_ONE: "1-to-1", MANY_TO_ONE: "M-to-1"},
    "phase": {POISON_PHASE: "before retraining", CLEAN_PHASE: "after retraining"},
}
STATISTICS = ("mean", "std", "count")
# What a table cell or plotted point averages over: the runs of every poison class and seed.
AVERAGED_OVER = ("poison_class", "seed")
MISSING = "-"  # how an empty cell reads in Markdown
COLUMN_SEPARATOR = " / "  # joins two-level column labels into one CSV/Markdown header

TABLE_NOTES = {
    "table1": (
        "Many-to-one poisoning statistics (eqs. 8-9). `num_poisoned` = floor(poison_rate * N_t); "
        "`P_<class>` = expected number of poisoned images drawn from each source class (eq. 8). "
        "`effective_poisoning_rate` p is defined in docs/decisions.md#effective-poisoning-rate: "
        "num_poisoned / (all images in the set, every class counted), printed to 4 decimals. "
        "The paper's Table 1 prints p for dandelion and tulip as 0.025 and 0.023; with its own counts "
        "(4003 images) they are 98/4003 = 0.0245 and 90/4003 = 0.0225, so those two values are "
        "misprinted (rounding) in the paper."
    ),
    "table2": (
        "Adversarial success rate (fraction of triggered non-poison-class adversarial-test images "
        "predicted as the poison class), mean over poison classes and seeds. Retrained? No: the "
        "early-stopped model (phase poison); Yes: after clean retraining (phase clean). "
        "Runs per cell: `table2_n`."
    ),
    "table3": (
        "Validation accuracy, mean over poison classes and seeds. Poisoned: poison-validation set "
        "(poisoned labels); Clean: clean-validation set. Retrained? No: phase poison; Yes: phase clean. "
        "Runs per cell: `table3_n`."
    ),
    "table4": (
        "Validation accuracy of the early-stopped model (phase poison). 1-to-1: mean ± sample std "
        "(ddof=1) over source classes (each source averaged over seeds first); M-to-1: mean over seeds."
    ),
    "table5": (
        "Adversarial success rate of the early-stopped model (phase poison). 1-to-1: over all "
        "non-poison-class adversarial-test images; 1-to-1 source class: over the source class's "
        "images only; mean ± sample std (ddof=1) over source classes (each averaged over seeds "
        "first). M-to-1: mean over seeds."
    ),
    "table_optimizer": (
        "Beyond the paper (its future work): the optimizer of training and clean retraining. Clean "
        "validation accuracy and adversarial success rate of the early-stopped model (before retraining, "
        "phase poison) and after clean retraining (phase clean), mean ± sample std (ddof=1) over poison "
        "classes and seeds. Each optimizer trains with its own settings (config `optimizers:`); `default` "
        "is the `train:` block's optimizer."
    ),
}


# --------------------------------------------------------------------------- helpers


def trigger_order() -> list[str]:
    """The paper's trigger order (bs, rs, sin, lv): the registered triggers, in registration order."""
    return TRIGGERS.in_order()


def display_name(kind: str, name: Any) -> str:
    """The paper's name for a dataset/model/trigger/regularizer/strategy/phase; unknown names as-is.

    A trigger's is its class's ``title`` (``backdoor_eval.triggers.trigger_title``)."""
    if kind == "trigger":
        return trigger_title(str(name))
    if kind not in DISPLAY_NAMES:
        raise ValueError(f"display-name kind {kind!r} is unknown; allowed: trigger, {', '.join(DISPLAY_NAMES)}")
    return DISPLAY_NAMES[kind].get(str(name), str(name))


def ordered(values: Iterable[Any], preferred: Sequence[Any]) -> list[Any]:
    """The distinct ``values``: those in ``preferred`` in that order, then the rest sorted."""
    present = list(dict.fromkeys(values))
    first = [value for value in dict.fromkeys(preferred) if value in present]
    rest = sorted((value for value in present if value not in preferred), key=str)
    return first + rest


def _require_columns(frame: pd.DataFrame, columns: Iterable[str], what: str) -> None:
    missing = [column for column in columns if column not in frame.columns]
    if missing:
        raise ValueError(f"{what} lacks column(s) {', '.join(missing)}; it has: {', '.join(map(str, frame.columns))}")


def select_runs(runs: pd.DataFrame, experiment: str, phase: str | None = None) -> pd.DataFrame:
    """Rows of ``runs`` for ``experiment`` (and ``phase`` when given).

    An experiment or phase with no rows is a ``ValueError`` naming it and what
    ``runs`` does hold, so a table never silently comes out empty.
    """
    _require_columns(runs, ["experiment", "phase"], "runs (expected runs.parquet from `backdoor-eval aggregate`)")
    if phase is not None and phase not in PHASES:
        raise ValueError(f"phase {phase!r} is unknown; allowed: {', '.join(PHASES)}")
    part = runs[runs["experiment"] == experiment]
    if part.empty:
        present = ", ".join(sorted(map(str, runs["experiment"].unique()))) or "none"
        raise ValueError(f"experiment {experiment!r} has no runs in runs.parquet; experiments present: {present}")
    if phase is not None:
        phased = part[part["phase"] == phase]
        if phased.empty:
            present = ", ".join(sorted(map(str, part["phase"].unique())))
            raise ValueError(
                f"experiment {experiment!r} has no {phase!r}-phase rows in runs.parquet; phases present: {present}"
            )
        part = phased
    return part


def without_untrained(runs: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """``runs`` less the rows of runs flagged ``untrained`` (their poison phase kept epoch 0, the model
    before any update: docs/decisions.md#untrained-models), and the run ids left out. A ``runs.parquet``
    from before the flag existed has no such column: nothing is left out."""
    if "untrained" not in runs.columns:
        return runs, []
    flagged = runs["untrained"].fillna(False).astype(bool)
    return runs[~flagged], sorted(set(map(str, runs.loc[flagged, "run_id"])))


def group_runs(part: pd.DataFrame, by: Sequence[str], over: Sequence[str], what: str, sort: bool = True) -> Any:
    """``part`` grouped by the columns ``by`` (``sort`` as pandas), to be reduced over the factors ``over``.

    Every other run factor (``backdoor_eval.factors``) must take one value in
    each group: a table or figure names each factor it averages over, and
    refuses to average silently over one that varies (two optimizers, say),
    naming it. A factor the rows lack (results made before it existed) is
    one value throughout.
    """
    others = [factor for factor in FACTOR_NAMES if factor in part.columns and factor not in by and factor not in over]
    if others and not part.empty:
        distinct = part.groupby(list(by), sort=False, dropna=False)[others].nunique(dropna=False)
        varying = [factor for factor in others if (distinct[factor] > 1).any()]
        if varying:
            factor = varying[0]
            values = ", ".join(sorted(map(str, part[factor].unique())))
            raise ValueError(
                f"{what}: its runs differ in {factor} ({values}) within one cell, and it averages only over "
                f"{', '.join(over) or 'nothing'}; allowed: runs with one {factor} per "
                f"{', '.join(by)}, or an output that groups by {factor}"
            )
    return part.groupby(list(by), sort=sort)


def _check_statistic(statistic: str) -> None:
    if statistic not in STATISTICS:
        raise ValueError(f"statistic {statistic!r} is unknown; allowed: {', '.join(STATISTICS)}")


# --------------------------------------------------------------------------- Table 1


def table1(class_counts: Sequence[int], class_names: Sequence[str], poison_rate: float) -> pd.DataFrame:
    """Table 1: many-to-one poisoning statistics for ``class_counts`` at ``poison_rate`` (eqs. 8-9).

    One row per poison class: ``poison_class``, ``num_poisoned`` (floor(rate * N_t)),
    ``P_<class>`` (eq. 8) and ``effective_poisoning_rate`` (p as in
    docs/decisions.md#effective-poisoning-rate, not eq. 9's denominator, see :data:`TABLE_NOTES`).
    """
    from backdoor_eval.poison import poison_stats

    if len(class_counts) != len(class_names):
        raise ValueError(
            f"class_counts has {len(class_counts)} entries but class_names has {len(class_names)}; "
            "allowed: one count per class name"
        )
    frame = poison_stats(list(class_counts), poison_rate, strategy=MANY_TO_ONE, class_names=list(class_names))
    return frame.reset_index(drop=True)


def table1_decimals(frame: pd.DataFrame) -> dict[str, int]:
    """Markdown decimals for Table 1: P_c to 1 decimal as in the paper, p to 4.

    p is defined in docs/decisions.md#effective-poisoning-rate.
    """
    decimals = {column: 1 for column in frame.columns if str(column).startswith("P_")}
    decimals["effective_poisoning_rate"] = 4
    return decimals


# --------------------------------------------------------------------------- Tables 2, 3

Experiments = str | Sequence[str] | None  # one experiment, several, or none (that half left out)


def retraining_halves(runs: pd.DataFrame, experiments: Sequence[str]) -> tuple[Experiments, Experiments]:
    """The (``no``, ``yes``) experiments of Tables 2 and 3 for ``experiments`` ("E1+E2+E7").

    Each experiment gives the "No" rows its poison-phase runs and the "Yes"
    rows its clean-phase runs, whichever of the two it has: "E1+E2" is the
    paper's (E1 trained, E2 retrained), and an experiment with both phases
    (``retrain: true``) fills both halves.
    """
    _require_columns(runs, ["experiment", "phase"], "runs (expected runs.parquet from `backdoor-eval aggregate`)")
    phases = runs.groupby("experiment")["phase"].agg(set)
    no = [name for name in experiments if POISON_PHASE in phases.get(name, set())]
    yes = [name for name in experiments if CLEAN_PHASE in phases.get(name, set())]
    return (no or None), (yes or None)


def _paper_grid(
    runs: pd.DataFrame,
    halves: Sequence[tuple[str, str | None, str]],
    splits: Sequence[tuple[str, str]],
    statistic: str,
    table: str,
) -> pd.DataFrame:
    """Rows (Dataset, Split, Retrained?) x columns (Model, Trigger), as Tables 2 and 3.

    ``halves``: (Retrained? label, experiment(s) or None, phase); ``splits``:
    (Split label, metric column). Each cell reduces every run of its
    (dataset, model, trigger) with ``statistic``.
    """
    import pandas as pd

    _check_statistic(statistic)
    if all(experiment is None for _, experiment, _ in halves):
        raise ValueError(f"{table}: no experiment given; allowed: an experiment name for 'no', 'yes' or both")
    records = []
    for retrained, experiment, phase in halves:
        if experiment is None:
            continue
        names = [experiment] if isinstance(experiment, str) else list(experiment)
        # A run in two of the experiments counts once.
        part = pd.concat([select_runs(runs, name, phase) for name in names]).drop_duplicates(["run_id", "phase"])
        metrics = [column for _, column in splits]
        _require_columns(part, ["dataset", "model", "trigger", *metrics], f"runs of experiment {experiment!r}")
        cells = group_runs(part, ["dataset", "model", "trigger"], AVERAGED_OVER, f"{table} ({experiment})", sort=False)
        grouped = cells[metrics].agg(statistic)
        for (dataset, model, trigger), values in grouped.iterrows():
            for split, column in splits:
                records.append((dataset, split, retrained, model, trigger, values[column]))
    long = pd.DataFrame.from_records(records, columns=["dataset", "split", "retrained", "model", "trigger", "value"])

    datasets = ordered(long["dataset"], DATASET_ORDER)
    models = ordered(long["model"], MODEL_ORDER)
    triggers = ordered(long["trigger"], trigger_order())
    # Paper row order: dataset, then No before Yes, then the splits.
    row_order = [
        (dataset, split, retrained)
        for dataset in datasets
        for retrained, experiment, _ in halves
        if experiment is not None
        for split, _ in splits
    ]
    column_order = [(model, trigger) for model in models for trigger in triggers]
    wide = (
        long.set_index(["dataset", "split", "retrained", "model", "trigger"])["value"]
        .unstack(["model", "trigger"])
        .reindex(index=pd.MultiIndex.from_tuples(row_order), columns=pd.MultiIndex.from_tuples(column_order))
        .dropna(how="all", axis=0)
        .dropna(how="all", axis=1)
    )
    if statistic == "count":
        wide = wide.fillna(0).astype("int64")
    wide.index = pd.MultiIndex.from_tuples(
        [(display_name("dataset", d), s, r) for d, s, r in wide.index], names=["Dataset", "Split", "Retrained?"]
    )
    wide.columns = pd.MultiIndex.from_tuples(
        [(display_name("model", m), display_name("trigger", t)) for m, t in wide.columns], names=["Model", "Trigger"]
    )
    return wide


def table2(
    runs: pd.DataFrame, no: Experiments = "E1", yes: Experiments = "E2", statistic: str = "mean"
) -> pd.DataFrame:
    """Table 2: adversarial success rate before (``no``) and after (``yes``) clean retraining.

    Rows (Dataset, Split="Adversarial Test", Retrained? No/Yes), columns
    (Model, Trigger) in the paper's order. "No" rows are the ``poison`` phase
    of experiment(s) ``no``, "Yes" rows the ``clean`` phase of experiment(s)
    ``yes`` (a name or a list; a run in several counts once); pass ``None``
    to leave a half out. Each cell is ``statistic`` ("mean", "std" (ddof=1)
    or "count" of runs) over poison classes and seeds.
    """
    halves = [("No", no, POISON_PHASE), ("Yes", yes, CLEAN_PHASE)]
    return _paper_grid(runs, halves, [("Adversarial Test", "adversarial_success_rate")], statistic, "table2")


def table3(
    runs: pd.DataFrame, no: Experiments = "E1", yes: Experiments = "E2", statistic: str = "mean"
) -> pd.DataFrame:
    """Table 3: accuracy before/after clean retraining, as :func:`table2`.

    Split "Poisoned" is ``poison_val_accuracy``, "Clean" is ``clean_val_accuracy``.
    """
    halves = [("No", no, POISON_PHASE), ("Yes", yes, CLEAN_PHASE)]
    splits = [("Poisoned", "poison_val_accuracy"), ("Clean", "clean_val_accuracy")]
    return _paper_grid(runs, halves, splits, statistic, "table3")


# --------------------------------------------------------------------------- Tables 4, 5


def _strategy_table(
    runs: pd.DataFrame, experiment: str, phase: str, columns: Sequence[tuple[str, str, str]]
) -> pd.DataFrame:
    """Rows (Model, Dataset); per ``columns`` entry (label, strategy, metric) the numbers.

    One-to-one: each source class is averaged over its runs (seeds, poison
    classes), then mean and sample std (ddof=1) over source classes.
    Many-to-one: mean over runs.
    """
    import pandas as pd

    part = select_runs(runs, experiment, phase)
    _require_columns(
        part,
        ["model", "dataset", "strategy", "source", *{metric for _, _, metric in columns}],
        f"runs of experiment {experiment!r}",
    )
    unknown = sorted(set(map(str, part["strategy"].unique())) - set(STRATEGIES))
    if unknown:
        raise ValueError(f"experiment {experiment!r} has strategy {unknown[0]!r}; allowed: {', '.join(STRATEGIES)}")
    data: dict[tuple[str, str], pd.Series] = {}
    for label, strategy, metric in columns:
        sub = part[part["strategy"] == strategy]
        if sub.empty:
            continue
        what = f"{label} ({experiment})"
        if strategy == ONE_TO_ONE:
            per_source = group_runs(sub, ["model", "dataset", "source"], AVERAGED_OVER, what)[metric].mean()
            over_sources = per_source.groupby(level=["model", "dataset"]).agg(["mean", "std"])
            data[(label, "mean")] = over_sources["mean"]
            data[(label, "std")] = over_sources["std"]
        else:
            data[(label, "mean")] = group_runs(sub, ["model", "dataset"], AVERAGED_OVER, what)[metric].mean()
    if not data:
        raise ValueError(f"experiment {experiment!r} has no {phase!r}-phase runs of strategy {', '.join(STRATEGIES)}")
    frame = pd.DataFrame(data)
    frame.columns = pd.MultiIndex.from_tuples(frame.columns, names=["Column", "Statistic"])
    models = ordered(frame.index.get_level_values("model"), MODEL_ORDER)
    datasets = ordered(frame.index.get_level_values("dataset"), DATASET_ORDER)
    # The paper lists the models of one dataset, then the next dataset.
    row_order = [(m, d) for d in datasets for m in models if (m, d) in frame.index]
    frame = frame.reindex(pd.MultiIndex.from_tuples(row_order))
    frame.index = pd.MultiIndex.from_tuples(
        [(display_name("model", m), display_name("dataset", d)) for m, d in frame.index], names=["Model", "Dataset"]
    )
    return frame


def table4(runs: pd.DataFrame, experiment: str = "E6", phase: str = POISON_PHASE) -> pd.DataFrame:
    """Table 4: poisoned/clean validation accuracy, one-to-one vs many-to-one.

    Rows (Model, Dataset); columns (Column, Statistic): "Poisoned 1-to-1"
    mean/std, "Poisoned M-to-1" mean, "Clean 1-to-1" mean/std, "Clean M-to-1"
    mean. std is the sample std (ddof=1) over source classes.
    """
    columns = [
        ("Poisoned 1-to-1", ONE_TO_ONE, "poison_val_accuracy"),
        ("Poisoned M-to-1", MANY_TO_ONE, "poison_val_accuracy"),
        ("Clean 1-to-1", ONE_TO_ONE, "clean_val_accuracy"),
        ("Clean M-to-1", MANY_TO_ONE, "clean_val_accuracy"),
    ]
    return _strategy_table(runs, experiment, phase, columns)


def table5(runs: pd.DataFrame, experiment: str = "E6", phase: str = POISON_PHASE) -> pd.DataFrame:
    """Table 5: adversarial success rate, one-to-one vs many-to-one.

    Columns: "1-to-1" (all non-poison-class adversarial-test images) mean/std,
    "1-to-1 source class" (``adversarial_success_rate_source``) mean/std,
    "M-to-1" mean; std over source classes (ddof=1).
    """
    columns = [
        ("1-to-1", ONE_TO_ONE, "adversarial_success_rate"),
        ("1-to-1 source class", ONE_TO_ONE, "adversarial_success_rate_source"),
        ("M-to-1", MANY_TO_ONE, "adversarial_success_rate"),
    ]
    return _strategy_table(runs, experiment, phase, columns)


# --------------------------------------------------------------------------- the optimizer (beyond the paper)

OPTIMIZER_METRICS = (("Clean accuracy", "clean_val_accuracy"), ("Adversarial success", "adversarial_success_rate"))
OPTIMIZER_KEYS = ("dataset", "model", "trigger", "optimizer")


def optimizer_means(runs: pd.DataFrame, experiment: str = "E8") -> pd.DataFrame:
    """The numbers of the optimizer table and figure, long: one row per (dataset, model, trigger,
    optimizer, phase, metric) with the ``mean``, sample ``std`` (ddof=1) and ``count`` of its runs
    (poison classes and seeds), in display order."""
    import pandas as pd

    part = select_runs(runs, experiment)
    metrics = [metric for _, metric in OPTIMIZER_METRICS]
    _require_columns(part, [*OPTIMIZER_KEYS, *metrics], f"runs of experiment {experiment!r}")
    frames = []
    for phase in ordered(part["phase"], PHASES):
        cells = group_runs(
            part[part["phase"] == phase], OPTIMIZER_KEYS, AVERAGED_OVER, f"table_optimizer ({experiment})"
        )
        for _, metric in OPTIMIZER_METRICS:
            stats = cells[metric].agg(["mean", "std", "count"]).reset_index()
            frames.append(stats.assign(phase=phase, metric=metric))
    long = pd.concat(frames, ignore_index=True)
    orders = {
        "dataset": ordered(long["dataset"], DATASET_ORDER),
        "model": ordered(long["model"], MODEL_ORDER),
        "trigger": ordered(long["trigger"], trigger_order()),
        "optimizer": ordered(long["optimizer"], OPTIMIZER_ORDER),
        "phase": ordered(long["phase"], PHASES),
        "metric": metrics,
    }
    for column, order in orders.items():
        long[column] = pd.Categorical(long[column], categories=order, ordered=True)
    long = long.sort_values(list(orders)).reset_index(drop=True)
    for column in orders:
        long[column] = long[column].astype(str)
    return long


def table_optimizer(runs: pd.DataFrame, experiment: str = "E8") -> pd.DataFrame:
    """Beyond the paper: clean accuracy and adversarial success per optimizer, before and after retraining.

    Rows (Dataset, Model, Trigger, Optimizer); columns (Column, Statistic):
    for each phase the experiment has and each metric, mean and sample std
    over poison classes and seeds (:func:`optimizer_means`).
    """
    import pandas as pd

    long = optimizer_means(runs, experiment)
    labels = {metric: label for label, metric in OPTIMIZER_METRICS}
    long["column"] = [f"{labels[m]}, {display_name('phase', p)}" for m, p in zip(long["metric"], long["phase"])]
    columns = list(dict.fromkeys(long["column"]))
    wide = long.set_index([*OPTIMIZER_KEYS, "column"])[["mean", "std"]].unstack("column")
    rows = list(dict.fromkeys(zip(*(long[key] for key in OPTIMIZER_KEYS))))
    wide = wide.reindex(index=pd.MultiIndex.from_tuples(rows))
    frame = pd.DataFrame({(column, stat): wide[(stat, column)] for column in columns for stat in ("mean", "std")})
    frame.columns = pd.MultiIndex.from_tuples(frame.columns, names=["Column", "Statistic"])
    frame.index = pd.MultiIndex.from_tuples(
        [tuple(display_name(kind, value) for kind, value in zip(OPTIMIZER_KEYS, row)) for row in rows],
        names=["Dataset", "Model", "Trigger", "Optimizer"],
    )
    return frame


# --------------------------------------------------------------------------- aggregation


def combine_runs(
    membership: Mapping[str, Any],
    summaries: Mapping[str, pd.DataFrame],
    epochs: Mapping[str, pd.DataFrame],
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Concatenate per-run frames into ``(runs, epochs)`` as the membership file says.

    ``runs``: for every experiment, its runs' summary rows of the experiment's
    ``phases``, with ``experiment`` as the first column (a run in two
    experiments appears under both). ``epochs``: every run's per-epoch rows
    once, in first-listed order. ``summaries``/``epochs`` map run_id -> frame.
    A run missing from either mapping, or without a listed phase, is a
    ``ValueError`` naming it.
    """
    import pandas as pd

    experiments = membership.get("experiments")
    if not isinstance(experiments, Mapping):
        raise ValueError(
            "membership has no 'experiments' mapping; allowed: {'experiments': {name: {...}}, 'runs': {...}}"
        )
    run_frames: list[pd.DataFrame] = []
    run_order: list[str] = []
    for experiment, entry in experiments.items():
        phases = list(entry.get("phases", []))
        bad = [phase for phase in phases if phase not in PHASES]
        if not phases or bad:
            raise ValueError(
                f"experiment {experiment!r} has phases {phases!r}; allowed: a non-empty list of {', '.join(PHASES)}"
            )
        for run_id in entry.get("runs", []):
            if run_id not in summaries:
                raise ValueError(f"run {run_id!r} (experiment {experiment!r}) has no summary")
            summary = summaries[run_id]
            _require_columns(summary, ["run_id", "phase"], f"summary of run {run_id!r}")
            wrong = sorted(set(map(str, summary["run_id"].unique())) - {run_id})
            if wrong:
                raise ValueError(f"summary listed for run {run_id!r} holds run_id {wrong[0]!r}")
            for phase in phases:
                if not (summary["phase"] == phase).any():
                    raise ValueError(f"run {run_id!r} (experiment {experiment!r}) has no {phase!r}-phase summary row")
            rows = summary[summary["phase"].isin(phases)].copy()
            rows.insert(0, "experiment", experiment)
            run_frames.append(rows)
            if run_id not in run_order:
                run_order.append(run_id)
    if not run_frames:
        raise ValueError("membership lists no runs in any experiment; allowed: at least one run")
    epoch_frames = []
    for run_id in run_order:
        if run_id not in epochs:
            raise ValueError(f"run {run_id!r} has no per-epoch frame")
        epoch_frames.append(epochs[run_id])
    return _with_added_factors(pd.concat(run_frames, ignore_index=True)), pd.concat(epoch_frames, ignore_index=True)


def _with_added_factors(runs: pd.DataFrame) -> pd.DataFrame:
    """Rows summarized before a factor was added lack it (no column, or empty cells): they are runs at its
    default. Only when some row has the factor, so that results of configs that never use it stay as they were."""
    for factor, default in added_factor_defaults().items():
        if factor in runs.columns:
            runs[factor] = runs[factor].where(runs[factor].notna(), default)
    return runs


# --------------------------------------------------------------------------- writing


def flatten_columns(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with its index as leading columns and two-level column labels joined by " / "."""
    flat = frame.copy()
    if flat.columns.nlevels > 1:
        flat.columns = [COLUMN_SEPARATOR.join(map(str, label)) for label in flat.columns]
    if any(name is not None for name in flat.index.names):
        flat = flat.reset_index()
    return flat


def _format_value(value: Any, decimals: int) -> str:
    import pandas as pd

    if value is None or (isinstance(value, float) and pd.isna(value)):
        return MISSING
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int) or (hasattr(value, "dtype") and getattr(value.dtype, "kind", "") in "iu"):
        return str(int(value))
    if isinstance(value, float) or (hasattr(value, "dtype") and getattr(value.dtype, "kind", "") == "f"):
        return f"{float(value):.{decimals}f}"
    return str(value)


def _markdown_frame(frame: pd.DataFrame, decimals: int | Mapping[str, int]) -> pd.DataFrame:
    """A frame of strings: numbers rounded, (mean, std) column pairs as "mean ± std"."""
    import pandas as pd

    def places(column: str) -> int:
        return decimals.get(column, 2) if isinstance(decimals, Mapping) else decimals

    if frame.columns.nlevels == 2 and frame.columns.names[-1] == "Statistic":
        combined = {}
        for label in dict.fromkeys(frame.columns.get_level_values(0)):
            digits = places(label)
            means = frame[(label, "mean")]
            stds = frame[(label, "std")] if (label, "std") in frame.columns else None
            cells = []
            for row in frame.index:
                text = _format_value(means.loc[row], digits)
                if stds is not None and not pd.isna(stds.loc[row]) and text != MISSING:
                    text = f"{text} ± {_format_value(stds.loc[row], digits)}"
                cells.append(text)
            combined[label] = cells
        frame = pd.DataFrame(combined, index=frame.index)
    flat = flatten_columns(frame)
    return pd.DataFrame(
        {column: [_format_value(v, places(column)) for v in flat[column].tolist()] for column in flat.columns}
    )


def to_markdown(
    frame: pd.DataFrame, decimals: int | Mapping[str, int] = 2, title: str | None = None, note: str | None = None
) -> str:
    """Markdown text of ``frame``: optional title, the table, optional note below it."""
    import pandas as pd

    strings = _markdown_frame(frame, decimals)
    flat = flatten_columns(frame)
    # Numbers right-aligned, labels left; "mean ± std" columns exist only in `strings`.
    align = [
        "left" if column in flat.columns and not pd.api.types.is_numeric_dtype(flat[column]) else "right"
        for column in strings.columns
    ]
    # disable_numparse keeps "0.80" as written (tabulate would print 0.8).
    table = strings.to_markdown(index=False, disable_numparse=True, colalign=align)
    parts = [f"# {title}"] if title else []
    parts.append(table)
    if note:
        parts.append(note)
    return "\n\n".join(parts) + "\n"


def write_table(
    frame: pd.DataFrame,
    csv_path: str | os.PathLike,
    md_path: str | os.PathLike,
    decimals: int | Mapping[str, int] = 2,
    title: str | None = None,
    note: str | None = None,
) -> None:
    """Write ``frame`` to ``csv_path`` (full precision, flat header) and ``md_path`` (rounded), atomically."""
    with atomic_path(csv_path) as tmp:
        flatten_columns(frame).to_csv(tmp, index=False)
    text = to_markdown(frame, decimals=decimals, title=title, note=note)
    with atomic_path(md_path) as tmp:
        tmp.write_text(text, encoding="utf-8")


# --------------------------------------------------------------------------- retraining budget


#: Retraining epochs the budget table reports besides the last: before any update, and the paper's 5.
RETRAINING_MARKS = (0, 5)


def retraining_epochs(runs: pd.DataFrame, epochs: pd.DataFrame, experiment: str) -> pd.DataFrame:
    """The clean-retraining epochs (``epochs.parquet`` rows, phase clean) of ``experiment``'s retrained runs.

    Epoch 0 is the early-stopped model before its first clean update (the poison phase's kept model).
    """
    _require_columns(epochs, ["run_id", "phase", "epoch", "adversarial_success_rate"], "epochs (epochs.parquet)")
    run_ids = set(select_runs(runs, experiment, CLEAN_PHASE)["run_id"])
    part = epochs[(epochs["phase"] == CLEAN_PHASE) & epochs["run_id"].isin(run_ids)]
    if part.empty:
        raise ValueError(
            f"experiment {experiment!r}: epochs.parquet has no clean-phase rows of its {len(run_ids)} runs"
        )
    return part


def retraining_budget(
    runs: pd.DataFrame, epochs: pd.DataFrame, experiment: str, marks: Sequence[int] = RETRAINING_MARKS
) -> pd.DataFrame:
    """ASR and clean-validation accuracy after ``marks`` epochs of clean retraining and after the last,
    per (dataset, model, trigger): mean, sample std (ddof=1) and min/max over the runs (classes x seeds).

    One retraining job of N epochs answers every budget up to N: epochs.parquet records each epoch.
    """
    import pandas as pd

    part = retraining_epochs(runs, epochs, experiment)
    last = int(part["epoch"].max())
    keys = ["dataset", "model", "trigger"]
    rows = []
    for key, group in group_runs(part, keys, ["poison_class", "seed"], "retraining_budget", sort=False):
        row = dict(zip(keys, key))
        row["runs"] = group["run_id"].nunique()
        for mark in sorted({*marks, last}):
            at = group[group["epoch"] == mark]
            if at["run_id"].nunique() != row["runs"]:
                continue  # a run retrained for fewer epochs: no value at this budget
            label = f"e{mark}"
            asr = at["adversarial_success_rate"]
            row[f"ASR {label} mean"], row[f"ASR {label} std"] = asr.mean(), asr.std(ddof=1)
            row[f"ASR {label} min"], row[f"ASR {label} max"] = asr.min(), asr.max()
            row[f"clean acc {label} mean"] = at["clean_val_accuracy"].mean()
        rows.append(row)
    frame = pd.DataFrame(rows)
    frame["model"] = pd.Categorical(frame["model"], ordered(frame["model"], list(DISPLAY_NAMES["model"])))
    frame["trigger"] = pd.Categorical(frame["trigger"], ordered(frame["trigger"], trigger_order()))
    frame = frame.sort_values(["dataset", "trigger", "model"]).reset_index(drop=True)
    frame["model"], frame["trigger"] = frame["model"].astype(str), frame["trigger"].astype(str)
    return frame


TABLE_NOTES["retraining_budget"] = (
    "Clean retraining, epoch by epoch (epochs.parquet, phase clean): adversarial success rate (ASR) and "
    "clean-validation accuracy after e<N> epochs of clean retraining (e0: the early-stopped poisoned model "
    "before any clean update; e5: the paper's budget; the last: the configured retrain_epochs), over the "
    "experiment's runs (poison classes x seeds): mean, sample std (ddof=1), min and max."
)

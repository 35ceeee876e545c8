"""Detection and defense results: aggregation, tables and figures (docs/detection.md#outputs).

- :func:`combine_detections`: the per-run result rows into ``detections.parquet``
  (one row per experiment x run x method, like ``runs.parquet``'s experiment x run x phase);
- :func:`defense_rows`: the filter-then-retrain phases into ``defenses.parquet``
  (one row per experiment x run x method, the run's factors and the phase's metrics) and
  ``defense_epochs.parquet`` (every epoch of those phases);
- :func:`detection_table`: AUROC, TPR and FPR per method x dataset x model x trigger;
- :func:`defense_table`: ASR and clean accuracy with no defense, after clean retraining and after
  filter-then-retrain with each method;
- :func:`detection_figure`: AUROC against one factor (poison rate, alpha, regularizer).

Tables average over the replicate factors only (seed, poison class, one-to-one
source); every other factor that varies among the rows becomes a row key, so
nothing is averaged over silently.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from backdoor_eval.factors import FACTOR_NAMES as FACTORS
from backdoor_eval.names import CLEAN_PHASE, POISON_PHASE

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

REPLICATE_FACTORS = ("seed", "poison_class", "source")
LEADING_FACTORS = ("dataset", "model", "trigger")
DETECTION_METRICS = ("auroc", "tpr", "fpr")
METRIC_TITLES = {"auroc": "AUROC", "tpr": "TPR", "fpr": "FPR"}
DEFENSE_METRICS = {"adversarial_success_rate": "ASR", "clean_val_accuracy": "clean acc."}
NO_DEFENSE, CLEAN_RETRAINING = "none", "clean retraining"


def method_title(method: str) -> str:
    from backdoor_eval.analyses import ANALYSES

    return ANALYSES.get(method).title if method in ANALYSES else method


def row_keys(frame: pd.DataFrame) -> list[str]:
    """dataset, model, trigger, then every other non-replicate factor that takes more than one value."""
    rest = [f for f in FACTORS if f not in LEADING_FACTORS and f not in REPLICATE_FACTORS]
    return list(LEADING_FACTORS) + [f for f in rest if f in frame.columns and frame[f].nunique() > 1]


# --------------------------------------------------------------------------- aggregation


def combine_detections(membership: Mapping[str, Any], results: Mapping[tuple[str, str], pd.DataFrame]) -> pd.DataFrame:
    """``results[(run_id, method)]`` (one-row frames) into one frame, ``experiment`` first, in membership order."""
    import pandas as pd

    frames = []
    for experiment, entry in membership["experiments"].items():
        for run_id in entry["runs"]:
            for method in entry["analyses"]:
                if (run_id, method) not in results:
                    raise ValueError(f"run {run_id!r} (experiment {experiment}) has no {method!r} result")
                frame = results[(run_id, method)].copy()
                if list(frame["run_id"]) != [run_id] or list(frame["method"]) != [method]:
                    raise ValueError(f"the {method!r} result listed for run {run_id!r} holds another run or method")
                frame.insert(0, "experiment", experiment)
                frames.append(frame)
    if not frames:
        raise ValueError("the analysis membership lists no analysis in any experiment")
    return pd.concat(frames, ignore_index=True)


def defense_rows(
    membership: Mapping[str, Any], phases: Mapping[tuple[str, str], tuple[dict, pd.DataFrame]]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``phases[(run_id, method)] = (final.json, epochs frame)`` of each filter-then-retrain phase, as rows with
    ``experiment``, the run's factors (:func:`backdoor_eval.evaluate.summarize`), ``method`` and the phase's metrics;
    and every epoch of those phases, one row per run x method x epoch (a run in two experiments once), with the
    run's factors and ``method``, as ``epochs.parquet`` has them per run x phase x epoch."""
    import pandas as pd

    from backdoor_eval.evaluate import summarize
    from backdoor_eval.experiments import Run

    frames, epoch_frames = [], {}
    for experiment, entry in membership["experiments"].items():
        for run_id in entry["runs"]:
            for method in entry["filter_retrain"]:
                if (run_id, method) not in phases:
                    raise ValueError(f"run {run_id!r} (experiment {experiment}) has no {method!r} filtered phase")
                final, history = phases[(run_id, method)]
                summary, epochs = summarize({"run_id": run_id, **Run.from_run_id(run_id).params()}, [(final, history)])
                summary.insert(0, "experiment", experiment)
                summary.insert(summary.columns.get_loc("phase"), "method", method)
                summary["num_train_images"] = int(final["num_train_images"])
                frames.append(summary)
                epochs.insert(epochs.columns.get_loc("phase"), "method", method)
                epoch_frames[(run_id, method)] = epochs
    if not frames:
        raise ValueError("the analysis membership lists no filter_retrain method in any experiment")
    return pd.concat(frames, ignore_index=True), pd.concat(epoch_frames.values(), ignore_index=True)


# --------------------------------------------------------------------------- tables


def detection_table(detections: pd.DataFrame) -> pd.DataFrame:
    """Mean and std of AUROC, TPR and FPR over replicate runs, per method x dataset x model x trigger (x any
    other factor that varies), each run once (a run in two experiments is not counted twice)."""
    import pandas as pd

    from backdoor_eval.tables import DATASET_ORDER, MODEL_ORDER, display_name, ordered, trigger_order

    rows = detections.drop_duplicates(["run_id", "method"])
    keys = row_keys(rows)
    grouped = rows.groupby(["method", *keys], sort=False)
    stats = grouped[list(DETECTION_METRICS)].agg(["mean", "std"])
    stats.columns = pd.MultiIndex.from_tuples(
        [(METRIC_TITLES[metric], statistic) for metric, statistic in stats.columns], names=["Metric", "Statistic"]
    )
    stats[("runs", "mean")] = grouped.size()
    orders = {"dataset": DATASET_ORDER, "model": MODEL_ORDER, "trigger": trigger_order()}
    frame = stats.reset_index()
    for key, preferred in orders.items():
        rank = {value: i for i, value in enumerate(ordered(frame[key], preferred))}
        frame[("_" + key, "")] = frame[key].map(rank)
    method_rank = {m: i for i, m in enumerate(ordered(frame["method"], ("spectral", "activation_clustering", "strip")))}
    frame[("_method", "")] = frame["method"].map(method_rank)
    frame = frame.sort_values([("_method", ""), *[("_" + k, "") for k in orders], *keys[3:]])
    frame = frame.drop(columns=[c for c in frame.columns if str(c[0]).startswith("_")])
    frame["method"] = frame["method"].map(method_title)
    for kind in LEADING_FACTORS:
        frame[kind] = frame[kind].map(lambda value, kind=kind: display_name(kind, value))
    index_columns = [c for c in frame.columns if c[1] == ""]
    frame = frame.set_index(index_columns)
    frame.index.names = ["Method", *[name.replace("_", " ").capitalize() for name in keys]]
    return frame


def defense_table(defenses: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """ASR and clean-validation accuracy per dataset x model x trigger (x varying factors), mean over replicate
    runs: no defense (the poison phase), clean retraining (the clean phase, where the run has one) and
    filter-then-retrain with each method."""
    import pandas as pd

    from backdoor_eval.tables import display_name

    metrics = list(DEFENSE_METRICS)
    filtered = defenses.drop_duplicates(["run_id", "method"])
    run_ids = filtered["run_id"].unique()
    phases = runs[runs["run_id"].isin(run_ids)].drop_duplicates(["run_id", "phase"])
    parts = [phases[phases["phase"] == POISON_PHASE].assign(defense=NO_DEFENSE)]
    clean = phases[phases["phase"] == CLEAN_PHASE]
    if not clean.empty:
        parts.append(clean.assign(defense=CLEAN_RETRAINING))
    parts.append(filtered.assign(defense=filtered["method"].map(lambda m: f"filter: {method_title(m)}")))
    # A file written before a factor was added (optimizer) lacks its column: the factors every part has.
    factors = [f for f in FACTORS if all(f in part.columns for part in parts)]
    rows = pd.concat([part[["run_id", *factors, "defense", *metrics]] for part in parts], ignore_index=True)
    keys = row_keys(rows)
    means = rows.groupby([*keys, "defense"], sort=False)[metrics].mean()
    defense_order = list(dict.fromkeys(rows["defense"]))
    table = means.unstack("defense")
    table.columns = pd.MultiIndex.from_tuples(
        [(defense, DEFENSE_METRICS[metric]) for metric, defense in table.columns], names=["Defense", "Metric"]
    )
    table = table[[(d, DEFENSE_METRICS[m]) for d in defense_order for m in metrics if (d, DEFENSE_METRICS[m]) in table]]
    table = table.reset_index()
    for kind in LEADING_FACTORS:
        table[kind] = table[kind].map(lambda value, kind=kind: display_name(kind, value))
    table = table.set_index([c for c in table.columns if c[1] == ""])
    table.index.names = [name.replace("_", " ").capitalize() for name in keys]
    return table


# --------------------------------------------------------------------------- figures


def detection_figure(detections: pd.DataFrame, experiment: str, factor: str) -> Figure:
    """AUROC against ``factor`` (poison_rate, alpha: log axis; regularizer: categories), one panel per method,
    one line per combination of the other varying factors, mean over replicate runs. ``fig.computed``: the means."""
    import numpy as np

    from backdoor_eval.figures import _new_figure, _palette, _x_scale
    from backdoor_eval.tables import REGULARIZER_ORDER, display_name, ordered

    part = detections[detections["experiment"] == experiment]
    part = part[part["method"] != "perfect_filter"]  # AUROC 1 by construction
    if part.empty:
        raise ValueError(f"experiment {experiment!r} has no detection rows to plot")
    lines = [key for key in row_keys(part) if key != factor and part[key].nunique() > 1]
    means = part.groupby(["method", *lines, factor])["auroc"].mean().reset_index()
    methods = ordered(means["method"], ("spectral", "activation_clustering", "strip"))
    groups = list(dict.fromkeys(map(tuple, means[lines].to_numpy()))) if lines else [()]
    colours = dict(zip(groups, _palette(len(groups))))
    categorical = factor == "regularizer"
    categories = ordered(means[factor], REGULARIZER_ORDER) if categorical else []
    fig = _new_figure(3.2 * len(methods), 3.2)
    axes = fig.subplots(1, len(methods), squeeze=False, sharey=True)[0]
    for ax, method in zip(axes, methods):
        cell = means[means["method"] == method]
        for group in groups:
            line = cell[(cell[lines] == list(group)).all(axis=1)] if lines else cell
            if line.empty:
                continue
            if categorical:
                x = line[factor].map({c: i for i, c in enumerate(categories)})
            else:
                x = line[factor]
            order = np.argsort(x.to_numpy())
            label = ", ".join(
                display_name(k, v) if k in ("dataset", "model", "trigger") else f"{k} {v}" for k, v in zip(lines, group)
            )
            ax.plot(
                x.to_numpy()[order],
                line["auroc"].to_numpy()[order],
                marker="o",
                markersize=3,
                color=colours[group],
                label=label or None,
            )
        ax.axhline(0.5, color="grey", linewidth=0.8, linestyle=":")
        ax.set_ylim(-0.03, 1.03)
        ax.set_title(method_title(method), fontsize=9)
        if categorical:
            ax.set_xticks(range(len(categories)), [display_name("regularizer", c) for c in categories], rotation=30)
        else:
            _x_scale(ax, cell[factor].to_numpy())
        ax.set_xlabel({"poison_rate": "Poison rate λ", "alpha": "α"}.get(factor, factor.capitalize()))
    axes[0].set_ylabel("Detection AUROC (poison class)")
    if lines:
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 4), frameon=False, fontsize=8)
    fig.computed = means
    return fig

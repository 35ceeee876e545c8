"""The paper's figures as functions of the tidy results (docs/decisions.md#experiment-grid).

Each ``fig*`` function takes ``runs`` (``runs.parquet``, one row per
experiment x run x phase) and returns a :class:`matplotlib.figure.Figure`;
the numbers it drew are kept on ``fig.computed`` so tests (and curious
readers) can check them without reading pixels. :func:`save_figure` writes
``stem.png`` and ``stem.pdf`` atomically.

Figures are built on :class:`matplotlib.figure.Figure` directly, never
through ``pyplot``: no GUI backend, no global figure registry to leak, the
same output as the Agg backend.

- :func:`fig2_trigger_gallery`: one image, each trigger embedded and alone (Fig. 2).
- :func:`fig4_regularization_heatmaps`: mean per (poison class, regularizer),
  colour = difference from ``none`` (Fig. 4); numbers from :func:`regularization_matrix`.
- :func:`fig5_regularization_boxplots`: spread over runs per regularizer (Fig. 5).
- :func:`fig6_alpha`: adversarial success vs alpha, before/after retraining (Fig. 6).
- :func:`fig7_poison_rate`: accuracy and adversarial success vs poison rate (Fig. 7).
- :func:`fig_optimizer`: beyond the paper, clean accuracy and adversarial success per optimizer,
  before and after retraining (numbers from :func:`backdoor_eval.tables.optimizer_means`).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from backdoor_eval.io import atomic_path
from backdoor_eval.names import PHASES, POISON_PHASE
from backdoor_eval.tables import (
    AVERAGED_OVER,
    DATASET_ORDER,
    MODEL_ORDER,
    REGULARIZER_ORDER,
    display_name,
    group_runs,
    optimizer_means,
    ordered,
    select_runs,
    trigger_order,
)

if TYPE_CHECKING:  # heavy imports stay lazy so the CLI's --help is fast
    import pandas as pd
    from matplotlib.figure import Figure

__all__ = [
    "FIGURE_FORMATS",
    "RegularizationMatrix",
    "fig2_trigger_gallery",
    "fig4_regularization_heatmaps",
    "fig5_regularization_boxplots",
    "fig6_alpha",
    "fig7_poison_rate",
    "fig_optimizer",
    "regularization_matrix",
    "render_trigger_alone",
    "save_figure",
]

FIGURE_FORMATS = ("png", "pdf")
PNG_DPI = 200
METRIC_LABELS = {
    "clean_val_accuracy": "Clean validation accuracy",
    "poison_val_accuracy": "Poisoned validation accuracy",
    "adversarial_success_rate": "Adversarial success rate",
}
GREY = 0.5  # canvas of the "trigger alone" panels and the offset for signed patterns
LINE_STYLES = ("-", "--", ":", "-.")


def _new_figure(width: float, height: float) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def save_figure(fig: Figure, *paths: str | os.PathLike, dpi: int = PNG_DPI) -> None:
    """Write ``fig`` to each path atomically, in the format its suffix names (.png at ``dpi``, .pdf)."""
    for path in map(Path, paths):
        fmt = path.suffix.lstrip(".")
        if fmt not in FIGURE_FORMATS:
            raise ValueError(
                f"figure file {path} ends in {path.suffix!r}; allowed: {', '.join('.' + f for f in FIGURE_FORMATS)}"
            )
        with atomic_path(path) as tmp:
            # The temporary name ends in .tmp, so the format is named explicitly.
            fig.savefig(tmp, format=fmt, dpi=dpi, bbox_inches="tight")


# --------------------------------------------------------------------------- Fig. 2


def render_trigger_alone(pattern: Any, mask: Any, height: int, width: int) -> np.ndarray:
    """The trigger by itself as an ``(H, W, 3)`` float image in [0, 1] (Fig. 2, second row).

    Inside the trigger region (mask = 0 in eq. 7) the pattern T is shown, on a
    mid-grey (0.5) canvas elsewhere. A pattern with negative values (SIN:
    0.4 sin(...)) is shown as 0.5 + T so that zero is grey.
    """
    pattern = np.broadcast_to(np.asarray(pattern, dtype=np.float32), (1, height, width, 3))[0]
    mask = np.broadcast_to(np.asarray(mask, dtype=np.float32), (1, height, width, 3))[0]
    shown = pattern + GREY if float(pattern.min()) < 0.0 else pattern
    return np.clip(np.where(mask < 0.5, shown, GREY), 0.0, 1.0).astype(np.float32)


def fig2_trigger_gallery(
    image_uint8: np.ndarray, triggers: Sequence[tuple[str, Any]], rng: np.random.Generator
) -> Figure:
    """Fig. 2: row 1 the clean image and the image with each trigger; row 2 each trigger alone.

    ``triggers`` is a list of (label, Trigger) at the alphas to show (the
    defaults for the paper's figure). Random triggers (RS) draw from ``rng``;
    the embedded and the lone picture of one trigger use the same draw.
    ``fig.computed`` holds ``{label: (triggered (H,W,3), alone (H,W,3))}``.
    """
    image = np.asarray(image_uint8)
    if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image has shape {image.shape} and dtype {image.dtype}; allowed: uint8 (H, W, 3)")
    if not triggers:
        raise ValueError("triggers is empty; allowed: a list of (label, Trigger)")
    height, width, _ = image.shape
    clean = image.astype(np.float32)[None] / np.float32(255.0)
    computed = {}
    for label, trigger in triggers:
        # One seed per trigger, copied, so apply() and pattern_and_mask() see the same draws.
        trigger_rng = np.random.default_rng(int(rng.integers(2**63)))
        triggered = np.asarray(trigger.apply(clean.copy(), copy.deepcopy(trigger_rng)))[0]
        pattern, mask = trigger.pattern_and_mask(1, height, width, copy.deepcopy(trigger_rng))
        computed[label] = (triggered, render_trigger_alone(pattern, mask, height, width))

    columns = len(triggers) + 1
    fig = _new_figure(2.0 * columns, 4.3)
    axes = fig.subplots(2, columns, squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    axes[0, 0].imshow(clean[0], vmin=0.0, vmax=1.0, interpolation="nearest")
    axes[0, 0].set_title("Clean", fontsize=9)
    axes[1, 0].text(0.5, 0.5, "trigger alone", ha="center", va="center", fontsize=9, transform=axes[1, 0].transAxes)
    for column, (label, trigger) in enumerate(triggers, start=1):
        triggered, alone = computed[label]
        alpha = getattr(trigger, "alpha", None)
        title = label if alpha is None else f"{label} (α = {alpha:g})"
        axes[0, column].imshow(triggered, vmin=0.0, vmax=1.0, interpolation="nearest")
        axes[0, column].set_title(title, fontsize=9)
        axes[1, column].imshow(alone, vmin=0.0, vmax=1.0, interpolation="nearest")
    fig.computed = computed
    return fig


# --------------------------------------------------------------------------- Figs. 4, 5


class RegularizationMatrix(NamedTuple):
    """Rows poison class, columns regularizer (``none`` first), raw names."""

    means: pd.DataFrame
    differences: pd.DataFrame  # means minus the ``none`` column


def regularization_matrix(
    runs: pd.DataFrame, metric: str, experiment: str = "E3", phase: str = POISON_PHASE
) -> RegularizationMatrix:
    """Fig. 4's numbers: mean of ``metric`` over seeds per (poison class, regularizer), minus the ``none`` column."""
    part = select_runs(runs, experiment, phase)
    if metric not in part.columns:
        raise ValueError(f"metric {metric!r} is not a column of runs; allowed: {', '.join(METRIC_LABELS)}")
    cells = group_runs(part, ["poison_class", "regularizer"], ["seed"], f"Fig. 4 ({experiment})")
    means = cells[metric].mean().unstack("regularizer")
    if "none" not in means.columns:
        raise ValueError(
            f"experiment {experiment!r} has no regularizer 'none' runs; allowed: the baseline 'none' plus "
            f"others (present: {', '.join(map(str, means.columns))})"
        )
    means = means.reindex(index=ordered(means.index, ()), columns=ordered(means.columns, REGULARIZER_ORDER))
    means.index.name, means.columns.name = "poison_class", "regularizer"
    return RegularizationMatrix(means, means.sub(means["none"], axis=0))


def fig4_regularization_heatmaps(runs: pd.DataFrame, experiment: str = "E3") -> Figure:
    """Fig. 4: (a) clean validation accuracy, (b) adversarial success rate per (poison class, regularizer).

    Cell text: mean over seeds. Colour: difference from the ``none`` column on
    a diverging map centred at 0, blue = decrease. ``fig.computed`` maps each
    metric to its :class:`RegularizationMatrix`.
    """
    import seaborn as sns

    metrics = ("clean_val_accuracy", "adversarial_success_rate")
    computed = {metric: regularization_matrix(runs, metric, experiment) for metric in metrics}
    width = 2.0 + 1.1 * computed[metrics[0]].means.shape[1]
    fig = _new_figure(2 * width, 0.6 * computed[metrics[0]].means.shape[0] + 2.0)
    axes = fig.subplots(1, 2, squeeze=False)[0]
    for ax, letter, metric in zip(axes, "ab", metrics):
        means, differences = computed[metric]
        # Symmetric limits keep 0 at the colour map's white centre.
        span = float(np.nanmax(np.abs(differences.to_numpy()))) if differences.notna().any().any() else 0.0
        span = max(span, 0.01)
        sns.heatmap(
            differences.astype(float),
            annot=means.to_numpy(dtype=float),
            fmt=".2f",
            cmap="RdBu_r",  # low (negative difference) = blue, as in the paper
            center=0.0,
            vmin=-span,
            vmax=span,
            linewidths=0.5,
            cbar_kws={"label": "difference from none"},
            xticklabels=[display_name("regularizer", r) for r in means.columns],
            yticklabels=list(means.index),
            ax=ax,
        )
        ax.set_title(f"({letter}) {METRIC_LABELS[metric]}")
        ax.set_xlabel("Regularizer")
        ax.set_ylabel("Poison class")
        ax.tick_params(axis="x", labelrotation=30)
        ax.tick_params(axis="y", labelrotation=0)
    fig.computed = computed
    return fig


def fig5_regularization_boxplots(runs: pd.DataFrame, experiment: str = "E3") -> Figure:
    """Fig. 5: box plots over all runs per regularizer of (a) clean validation accuracy, (b) adversarial success.

    ``fig.computed``: the plotted rows (``regularizer``, the two metrics) and the order.
    """
    import seaborn as sns

    part = select_runs(runs, experiment, POISON_PHASE)
    group_runs(part, ["regularizer"], AVERAGED_OVER, f"Fig. 5 ({experiment})")  # one box per regularizer
    metrics = ("clean_val_accuracy", "adversarial_success_rate")
    order = ordered(part["regularizer"], REGULARIZER_ORDER)
    data = part[["regularizer", *metrics]].copy()
    data["regularizer"] = [display_name("regularizer", r) for r in data["regularizer"]]
    labels = [display_name("regularizer", r) for r in order]
    fig = _new_figure(2 * (1.5 + 1.0 * len(order)), 3.8)
    axes = fig.subplots(1, 2, squeeze=False)[0]
    for ax, letter, metric in zip(axes, "ab", metrics):
        sns.boxplot(data=data, x="regularizer", y=metric, order=labels, color="#9ecae1", ax=ax)
        ax.set_title(f"({letter}) {METRIC_LABELS[metric]}")
        ax.set_xlabel("Regularizer")
        ax.set_ylabel(METRIC_LABELS[metric])
        ax.tick_params(axis="x", labelrotation=30)
    fig.computed = {"order": order, "data": part[["regularizer", *metrics]].reset_index(drop=True)}
    return fig


# --------------------------------------------------------------------------- Figs. 6, 7


def _palette(n: int) -> list:
    import seaborn as sns

    return list(sns.color_palette("colorblind", max(n, 1)))


def _x_scale(ax, values) -> None:
    # Alpha and poison-rate grids are dense at the low end: log scale when possible,
    # ticked at the grid's own values in plain numbers (a log axis's default minor
    # labels read "2x10^-1").
    if len(values) and float(np.min(values)) > 0:
        from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

        ax.set_xscale("log")
        ax.xaxis.set_major_locator(FixedLocator(sorted({float(v) for v in values})))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())


def fig6_alpha(runs: pd.DataFrame, experiment: str = "E4") -> Figure:
    """Fig. 6: adversarial success vs alpha, mean over seeds.

    Grid: rows dataset; columns trigger x phase (before retraining = phase
    poison, after = phase clean). Colour = model, line style = poison rate.
    ``fig.computed``: the plotted means (dataset, trigger, phase, model,
    poison_rate, alpha, adversarial_success_rate).
    """
    from matplotlib.lines import Line2D

    part = select_runs(runs, experiment)
    keys = ["dataset", "trigger", "phase", "model", "poison_rate", "alpha"]
    means = group_runs(part, keys, AVERAGED_OVER, f"Fig. 6 ({experiment})")["adversarial_success_rate"].mean()
    means = means.reset_index()
    datasets = ordered(means["dataset"], DATASET_ORDER)
    triggers = ordered(means["trigger"], trigger_order())
    phases = ordered(means["phase"], PHASES)
    models = ordered(means["model"], MODEL_ORDER)
    rates = sorted(means["poison_rate"].unique())
    colours = dict(zip(models, _palette(len(models))))
    styles = {rate: LINE_STYLES[i % len(LINE_STYLES)] for i, rate in enumerate(rates)}
    panels = [(trigger, phase) for trigger in triggers for phase in phases]

    fig = _new_figure(3.0 * len(panels), 2.6 * len(datasets) + 0.6)
    axes = fig.subplots(len(datasets), len(panels), squeeze=False, sharey=True)
    for row, dataset in enumerate(datasets):
        for column, (trigger, phase) in enumerate(panels):
            ax = axes[row, column]
            cell = means[(means["dataset"] == dataset) & (means["trigger"] == trigger) & (means["phase"] == phase)]
            for (model, rate), line in cell.groupby(["model", "poison_rate"]):
                line = line.sort_values("alpha")
                ax.plot(
                    line["alpha"],
                    line["adversarial_success_rate"],
                    color=colours[model],
                    linestyle=styles[rate],
                    marker="o",
                    markersize=3,
                )
            if cell.empty:
                ax.text(0.5, 0.5, "no runs", ha="center", va="center", transform=ax.transAxes)
            _x_scale(ax, cell["alpha"].to_numpy())
            ax.set_ylim(-0.03, 1.03)
            ax.set_title(
                f"{display_name('dataset', dataset)}, {display_name('trigger', trigger)}, "
                f"{display_name('phase', phase)}",
                fontsize=9,
            )
            ax.set_xlabel("α")
            if column == 0:
                ax.set_ylabel("Adversarial success rate")
    handles = [Line2D([], [], color=colours[m], marker="o", label=display_name("model", m)) for m in models]
    handles += [Line2D([], [], color="black", linestyle=styles[r], label=f"poison rate {r:g}") for r in rates]
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), frameon=False)
    fig.computed = means
    return fig


def fig7_poison_rate(runs: pd.DataFrame, experiment: str = "E5") -> Figure:
    """Fig. 7: (a) poisoned (solid) and clean (dashed) validation accuracy, (b) adversarial success, vs poison rate.

    One colour per trigger, mean over seeds (phase poison). ``fig.computed``:
    the plotted means per (trigger, poison_rate).
    """
    from matplotlib.lines import Line2D

    part = select_runs(runs, experiment, POISON_PHASE)
    metrics = ["poison_val_accuracy", "clean_val_accuracy", "adversarial_success_rate"]
    cells = group_runs(part, ["trigger", "poison_rate"], AVERAGED_OVER, f"Fig. 7 ({experiment})")
    means = cells[metrics].mean().reset_index()
    triggers = ordered(means["trigger"], trigger_order())
    colours = dict(zip(triggers, _palette(len(triggers))))
    fig = _new_figure(9.0, 4.2)
    ax_accuracy, ax_success = fig.subplots(1, 2, squeeze=False)[0]
    for trigger in triggers:
        line = means[means["trigger"] == trigger].sort_values("poison_rate")
        colour = colours[trigger]
        ax_accuracy.plot(line["poison_rate"], line["poison_val_accuracy"], color=colour, marker="o", markersize=3)
        ax_accuracy.plot(
            line["poison_rate"], line["clean_val_accuracy"], color=colour, linestyle="--", marker="s", markersize=3
        )
        ax_success.plot(line["poison_rate"], line["adversarial_success_rate"], color=colour, marker="o", markersize=3)
    for ax in (ax_accuracy, ax_success):
        _x_scale(ax, means["poison_rate"].to_numpy())
        ax.set_xlabel("Poison rate λ")
    ax_accuracy.set_title("(a) Validation accuracy")
    ax_accuracy.set_ylabel("Accuracy")
    ax_success.set_title("(b) Adversarial success rate")
    ax_success.set_ylabel("Adversarial success rate")
    ax_success.set_ylim(-0.03, 1.03)
    handles = [Line2D([], [], color=colours[t], marker="o", label=display_name("trigger", t)) for t in triggers]
    handles += [
        Line2D([], [], color="black", marker="o", label="poisoned validation"),
        Line2D([], [], color="black", linestyle="--", marker="s", label="clean validation"),
    ]
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), frameon=False, fontsize=8)
    fig.computed = means
    return fig


def retraining_curves(runs: pd.DataFrame, epochs: pd.DataFrame, experiment: str) -> Figure:
    """ASR during clean retraining, epoch by epoch: one panel per trigger, one line per model (mean over
    the runs, poison classes x seeds), the band their min-max; a dotted line at the paper's 5 epochs.
    ``fig.computed``: the plotted mean, min and max per (trigger, model, epoch)."""
    from backdoor_eval.tables import RETRAINING_MARKS, retraining_epochs

    part = retraining_epochs(runs, epochs, experiment)
    grouped = group_runs(part, ["trigger", "model", "epoch"], ["poison_class", "seed"], "retraining_curves")
    stats = grouped["adversarial_success_rate"].agg(["mean", "min", "max", "count"]).reset_index()
    triggers = ordered(stats["trigger"], trigger_order())
    models = ordered(stats["model"], [])
    colours = dict(zip(models, _palette(len(models))))
    fig = _new_figure(3.4 * len(triggers) + 0.6, 3.6)
    axes = fig.subplots(1, len(triggers), squeeze=False, sharey=True)[0]
    for ax, trigger in zip(axes, triggers):
        for model in models:
            line = stats[(stats["trigger"] == trigger) & (stats["model"] == model)].sort_values("epoch")
            if line.empty:
                continue
            ax.plot(line["epoch"], line["mean"], color=colours[model], marker="o", markersize=2.5, label=model)
            ax.fill_between(line["epoch"], line["min"], line["max"], color=colours[model], alpha=0.15, linewidth=0)
        for mark in RETRAINING_MARKS[1:]:
            ax.axvline(mark, color="grey", linestyle=":", linewidth=1)
        ax.set_title(display_name("trigger", trigger))
        ax.set_xlabel("Clean retraining epoch")
        ax.set_ylim(-0.03, 1.03)
    axes[0].set_ylabel("Adversarial success rate")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=max(1, len(models)), frameon=False, fontsize=8)
    fig.computed = stats
    return fig


# --------------------------------------------------------------------------- the optimizer (beyond the paper)


def fig_optimizer(runs: pd.DataFrame, experiment: str = "E8") -> Figure:
    """Clean accuracy and adversarial success per optimizer (bars, mean ± sample std over poison classes
    and seeds); columns: before and after clean retraining; one group of bars per (dataset, model, trigger).

    ``fig.computed``: :func:`backdoor_eval.tables.optimizer_means` of the experiment.
    """
    from matplotlib.patches import Patch

    means = optimizer_means(runs, experiment)
    groups = list(dict.fromkeys(zip(means["dataset"], means["model"], means["trigger"])))
    optimizers = list(dict.fromkeys(means["optimizer"]))
    phases = list(dict.fromkeys(means["phase"]))
    metrics = list(dict.fromkeys(means["metric"]))
    # A group's label names only what differs between groups (the trigger, for one dataset and model).
    varying = [i for i in range(3) if len({group[i] for group in groups}) > 1] or [2]
    kinds = ("dataset", "model", "trigger")
    labels = ["\n".join(display_name(kinds[i], group[i]) for i in varying) for group in groups]
    colours = dict(zip(optimizers, _palette(len(optimizers))))
    width = 0.8 / len(optimizers)
    fig = _new_figure(max(4.0, 1.2 * len(groups) * len(phases) + 1.5), 3.0 * len(metrics) + 0.6)
    axes = fig.subplots(len(metrics), len(phases), squeeze=False, sharey="row")
    for row, metric in enumerate(metrics):
        for column, phase in enumerate(phases):
            ax = axes[row, column]
            cell = means[(means["metric"] == metric) & (means["phase"] == phase)]
            for k, optimizer in enumerate(optimizers):
                bars = cell[cell["optimizer"] == optimizer].set_index(["dataset", "model", "trigger"])
                bars = bars.reindex(groups)
                positions = np.arange(len(groups)) + (k - (len(optimizers) - 1) / 2) * width
                ax.bar(
                    positions, bars["mean"], width, yerr=bars["std"].fillna(0.0), color=colours[optimizer], capsize=2
                )
            ax.set_xticks(np.arange(len(groups)), labels)
            ax.set_ylim(0.0, 1.03)
            ax.set_title(f"{METRIC_LABELS[metric]}, {display_name('phase', phase)}", fontsize=9)
            if column == 0:
                ax.set_ylabel(METRIC_LABELS[metric])
    handles = [Patch(color=colours[o], label=display_name("optimizer", o)) for o in optimizers]
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), frameon=False)
    fig.computed = means
    return fig

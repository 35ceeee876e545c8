"""CLI subcommands for the report area: aggregate, table1, table, figure, gallery.

``aggregate`` turns the per-run summaries into ``runs.parquet`` and
``epochs.parquet``; each ``table`` and ``figure`` is a function of
``runs.parquet`` only; ``table1`` and ``gallery`` come from a store. Every
file written is named on the command line. pandas, matplotlib and the
package modules are imported inside the handlers so ``backdoor-eval --help``
stays fast.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import Any

from backdoor_eval.names import FIGURES, RETRAINING_TABLES, TABLES, check_output_experiment_count, experiment_list

from .common import json_object, read_parquet, seed_int

log = logging.getLogger(__name__)

TABLE_TITLES = {
    "table2": "Table 2: adversarial success before/after clean retraining",
    "table3": "Table 3: accuracy before/after clean retraining",
    "table4": "Table 4: accuracy, one-to-one vs many-to-one",
    "table5": "Table 5: adversarial success, one-to-one vs many-to-one",
    "table_optimizer": "The optimizer (beyond the paper): accuracy and adversarial success before/after retraining",
}


def register(sub: argparse._SubParsersAction) -> None:
    """Add this area's subcommands to ``sub``."""
    p = sub.add_parser("aggregate", help="concatenate per-run summaries into runs.parquet and epochs.parquet")
    p.add_argument("--membership", required=True, help="membership JSON written by the workflow")
    p.add_argument("--out-runs", required=True, help="runs.parquet to write")
    p.add_argument("--out-epochs", required=True, help="epochs.parquet to write")
    p.set_defaults(func=cmd_aggregate)

    p = sub.add_parser("table1", help="Table 1: poison statistics (eqs. 8-9) on a store's class counts")
    p.add_argument("--store", required=True, help="store dir whose class names (and counts) make Table 1")
    p.add_argument("--poison-rate", type=float, default=0.1, help="poison rate lambda (default 0.1)")
    p.add_argument(
        "--class-counts",
        help="comma-separated class counts to use instead of the store's "
        "(the paper's Flowers counts: 710,980,734,675,904); class names still come from the store",
    )
    p.add_argument("--out-csv", required=True, help="table .csv to write")
    p.add_argument("--out-md", required=True, help="table .md to write")
    p.set_defaults(func=cmd_table1)

    p = sub.add_parser(
        "table", help="one of the paper's Tables 2-5 (or the optimizer table) from runs.parquet, as .csv and .md"
    )
    p.add_argument("--name", required=True, choices=TABLES)
    p.add_argument("--experiments", required=True, help='the experiment(s) it is built from, e.g. "E1+E2" or "E6"')
    p.add_argument("--runs", required=True, help="runs.parquet from `aggregate`")
    p.add_argument("--include-untrained", action="store_true", help=INCLUDE_UNTRAINED_HELP)
    p.add_argument("--out-csv", required=True, help="table .csv to write")
    p.add_argument("--out-md", required=True, help="table .md to write")
    p.add_argument("--out-counts-csv", help="tables 2-3: the number of runs per cell, .csv")
    p.add_argument("--out-counts-md", help="tables 2-3: the number of runs per cell, .md")
    p.set_defaults(func=cmd_table)

    p = sub.add_parser(
        "figure", help="one of the paper's Figs. 4-7 (or the optimizer figure) from runs.parquet, as .png and .pdf"
    )
    p.add_argument("--name", required=True, choices=FIGURES)
    p.add_argument("--experiments", required=True, help='the experiment it is built from, e.g. "E3"')
    p.add_argument("--runs", required=True, help="runs.parquet from `aggregate`")
    p.add_argument("--include-untrained", action="store_true", help=INCLUDE_UNTRAINED_HELP)
    p.add_argument("--out-png", required=True, help="figure .png to write")
    p.add_argument("--out-pdf", required=True, help="figure .pdf to write")
    p.set_defaults(func=cmd_figure)

    help_text = "clean retraining epoch by epoch: the budget table and the ASR curves, from epochs.parquet"
    p = sub.add_parser("retraining-budget", help=help_text, description=help_text)
    p.add_argument("--experiments", required=True, help='the retrained experiment it is built from, e.g. "F"')
    p.add_argument("--runs", required=True, help="runs.parquet from `aggregate` (which runs the experiment holds)")
    p.add_argument("--epochs", required=True, help="epochs.parquet from `aggregate` (every epoch of every phase)")
    p.add_argument("--out-csv", required=True, help="table .csv to write")
    p.add_argument("--out-md", required=True, help="table .md to write")
    p.add_argument("--out-png", required=True, help="figure .png to write")
    p.add_argument("--out-pdf", required=True, help="figure .pdf to write")
    p.set_defaults(func=cmd_retraining_budget)

    from backdoor_eval.names import fit_command, fit_name, fit_option
    from backdoor_eval.triggers import TRIGGERS, fitted_triggers

    p = sub.add_parser("gallery", help="Fig. 2: one clean-validation image with each trigger, and each trigger alone")
    p.add_argument("--store", required=True, help="store dir")
    p.add_argument("--partitions", required=True, help="partitions .npz")
    for kind in fitted_triggers():  # --lv-fit: each fitted trigger shown needs its fit file
        p.add_argument(
            fit_option(kind), dest=fit_name(kind), default=None, help=f"{kind} fit file (from `{fit_command(kind)}`)"
        )
    p.add_argument("--image-index", type=int, default=0, help="position in the clean_val partition (default 0)")
    p.add_argument("--seed", type=seed_int, default=0, help="seed of the random square's position (default 0)")
    p.add_argument(
        "--triggers",
        help='JSON {name: {"kind": K, "alpha": A, "params": {...}}}: the triggers to show, in order, as the config sets them '
        f"(default: every registered trigger, {', '.join(TRIGGERS.in_order())}, at its own defaults)",
    )
    p.add_argument("--out-png", required=True, help="figure .png to write")
    p.add_argument("--out-pdf", required=True, help="figure .pdf to write")
    p.set_defaults(func=cmd_gallery)


# --------------------------------------------------------------------------- argument helpers


def parse_experiments(text: str, name: str) -> list[str]:
    """``--experiments`` of output ``name``: experiment names ("E1+E2"), as many as the output takes."""
    experiments = experiment_list(text)
    check_output_experiment_count(name, experiments, f"--experiments {text!r} for {name}")
    return experiments


INCLUDE_UNTRAINED_HELP = "keep runs flagged untrained (their poison phase kept epoch 0); left out by default"


def _read_runs(args: argparse.Namespace):
    """``--runs``, less the runs flagged untrained unless ``--include-untrained`` (each left out is logged)."""
    from backdoor_eval.tables import without_untrained

    runs = read_parquet(args.runs, "runs file")
    if args.include_untrained:
        return runs
    kept, left_out = without_untrained(runs)
    if left_out:
        log.warning(
            "%s: left out %d run(s) flagged untrained (their poison phase kept epoch 0, the model before any "
            "update; --include-untrained keeps them), e.g. %s",
            args.runs,
            len(left_out),
            left_out[0],
        )
    return kept


def _require_experiments(runs: Any, experiments: list[str], runs_path: str) -> None:
    held = set(map(str, runs["experiment"].unique())) if "experiment" in runs.columns else set()
    missing = [name for name in experiments if name not in held]
    if missing:
        raise ValueError(
            f"experiment {missing[0]!r} has no rows in {runs_path}; experiments there: {', '.join(sorted(held)) or '(none)'}"
        )


def _built_from(experiments) -> str:
    return "Built from experiment(s) " + ", ".join(experiments) + " of runs.parquet."


# --------------------------------------------------------------------------- aggregate


def cmd_aggregate(args: argparse.Namespace) -> int:
    """Read the membership JSON and every run's summary/epochs Parquet; write runs/epochs Parquet."""
    from backdoor_eval.io import read_json, write_parquet
    from backdoor_eval.tables import combine_runs

    if not Path(args.membership).is_file():
        raise FileNotFoundError(f"membership file {args.membership} not found")
    membership = read_json(args.membership)
    experiments = membership.get("experiments") if isinstance(membership, dict) else None
    files = membership.get("runs") if isinstance(membership, dict) else None
    if not isinstance(experiments, dict) or not isinstance(files, dict):
        raise ValueError(
            f"membership {args.membership} lacks 'experiments' or 'runs' mappings; allowed: "
            '{"config_name": ..., "experiments": {...}, "runs": {run_id: {"summary": ..., "epochs": ...}}}'
        )
    summaries: dict[str, Any] = {}
    epochs: dict[str, Any] = {}
    for experiment, entry in experiments.items():
        run_ids = entry.get("runs", []) if isinstance(entry, dict) else []
        if not run_ids:
            log.warning(
                "aggregate: experiment %s lists no runs; the tables and figures built from it will fail", experiment
            )
        for run_id in run_ids:
            if run_id in summaries:
                continue  # a run shared by two experiments is read once
            paths = files.get(run_id)
            if not isinstance(paths, dict) or "summary" not in paths or "epochs" not in paths:
                raise ValueError(
                    f"run {run_id!r} (experiment {experiment}) has no 'summary'/'epochs' paths in the membership 'runs'"
                )
            # Relative paths are relative to the working directory (Snakemake's workdir).
            summaries[run_id] = read_parquet(paths["summary"], f"run {run_id!r}: summary file")
            epochs[run_id] = read_parquet(paths["epochs"], f"run {run_id!r}: epochs file")
    runs_frame, epochs_frame = combine_runs(membership, summaries, epochs)
    _warn_about_provenance(runs_frame)
    write_parquet(args.out_runs, runs_frame)
    write_parquet(args.out_epochs, epochs_frame)
    log.info(
        "aggregate: %d rows (%d runs, %d experiments) -> %s; %d epoch rows -> %s",
        len(runs_frame),
        len(summaries),
        runs_frame["experiment"].nunique(),
        args.out_runs,
        len(epochs_frame),
        args.out_epochs,
    )
    return 0


def _warn_about_provenance(runs: Any) -> None:
    """Say when the rows come from more than one version of the code, or include untrained runs."""
    for column in ("package_version", "git_commit"):
        if column in runs.columns and runs[column].nunique(dropna=False) > 1:
            made_by = ", ".join(sorted(map(str, runs[column].unique())))
            log.warning(
                "aggregate: the runs were made by %d %ss (%s); rerun the jobs of the older ones to compare like "
                "with like (README.md: Results and code changes)",
                runs[column].nunique(dropna=False),
                column.replace("_", " "),
                made_by,
            )
    if "untrained" in runs.columns and runs["untrained"].any():
        flagged = sorted(set(runs.loc[runs["untrained"].astype(bool), "run_id"]))
        log.warning(
            "aggregate: %d run(s) are flagged untrained (their poison phase kept epoch 0); the tables and "
            "figures leave them out, e.g. %s",
            len(flagged),
            flagged[0],
        )


# --------------------------------------------------------------------------- tables


def cmd_table1(args: argparse.Namespace) -> int:
    from backdoor_eval import tables

    frame, counted = _table1_from_store(args.store, args.poison_rate, args.class_counts)
    note = tables.TABLE_NOTES["table1"] + f" Class counts: {counted}."
    tables.write_table(
        frame,
        args.out_csv,
        args.out_md,
        decimals=tables.table1_decimals(frame),
        title=f"Table 1: poison statistics, poison rate {args.poison_rate:g}",
        note=note,
    )
    log.info("table1: wrote %s and %s", args.out_csv, args.out_md)
    return 0


def cmd_table(args: argparse.Namespace) -> int:
    """One of Tables 2-5 from the runs of its experiment(s)."""
    from backdoor_eval import tables

    retraining = args.name in RETRAINING_TABLES
    experiments = parse_experiments(args.experiments, args.name)
    wants_counts = args.out_counts_csv is not None or args.out_counts_md is not None
    if wants_counts and not (retraining and args.out_counts_csv and args.out_counts_md):
        raise ValueError(
            f"--out-counts-csv and --out-counts-md go together, and only with {' or '.join(RETRAINING_TABLES)}"
        )
    runs = _read_runs(args)
    _require_experiments(runs, experiments, args.runs)
    build = getattr(tables, args.name)
    note = tables.TABLE_NOTES[args.name] + " " + _built_from(experiments)
    if retraining:
        no, yes = tables.retraining_halves(runs, experiments)
        frame = build(runs, no=no, yes=yes)
        if wants_counts:
            tables.write_table(
                build(runs, no=no, yes=yes, statistic="count"),
                args.out_counts_csv,
                args.out_counts_md,
                title=f"{args.name}: number of runs per cell",
                note=_built_from(experiments),
            )
    else:
        frame = build(runs, experiment=experiments[0])
    tables.write_table(frame, args.out_csv, args.out_md, title=TABLE_TITLES[args.name], note=note)
    log.info("table %s: wrote %s and %s", args.name, args.out_csv, args.out_md)
    return 0


def _table1_from_store(store_dir: str, poison_rate: float, counts: str | None = None):
    import numpy as np

    from backdoor_eval.data import open_store
    from backdoor_eval.tables import table1

    store = open_store(store_dir)
    names = list(store.class_names)
    if counts:
        try:
            class_counts = [int(c) for c in counts.split(",")]
        except ValueError:
            raise ValueError(f"--class-counts {counts!r} is not a comma-separated list of integers") from None
        if len(class_counts) != len(names):
            raise ValueError(
                f"--class-counts gives {len(class_counts)} counts but the store has {len(names)} classes ({', '.join(names)})"
            )
        counted = f"as given ({counts})"
    else:
        # Counting the labels needs no assumption about the manifest's layout.
        class_counts = [int(c) for c in np.bincount(np.asarray(store.labels), minlength=len(names))]
        counted = f"all images of the store {store_dir}"
    return table1(class_counts, names, poison_rate), counted


# --------------------------------------------------------------------------- figures


def cmd_figure(args: argparse.Namespace) -> int:
    """One of Figs. 4-7 from the kept-epoch metrics of its experiment's runs."""
    from backdoor_eval import figures

    (experiment,) = parse_experiments(args.experiments, args.name)
    runs = _read_runs(args)
    _require_experiments(runs, [experiment], args.runs)
    builders = {
        "fig4": figures.fig4_regularization_heatmaps,
        "fig5": figures.fig5_regularization_boxplots,
        "fig6": figures.fig6_alpha,
        "fig7": figures.fig7_poison_rate,
        "fig_optimizer": figures.fig_optimizer,
    }
    fig = builders[args.name](runs, experiment=experiment)
    figures.save_figure(fig, args.out_png, args.out_pdf)
    log.info("figure %s: wrote %s and %s", args.name, args.out_png, args.out_pdf)
    return 0


def cmd_retraining_budget(args: argparse.Namespace) -> int:
    """The retraining-budget table and figure of one retrained experiment."""
    from backdoor_eval import figures, tables

    (experiment,) = parse_experiments(args.experiments, "retraining_budget")
    runs = read_parquet(args.runs, "runs file")
    _require_experiments(runs, [experiment], args.runs)
    epochs = read_parquet(args.epochs, "epochs file")
    frame = tables.retraining_budget(runs, epochs, experiment)
    note = tables.TABLE_NOTES["retraining_budget"] + " " + _built_from([experiment])
    tables.write_table(frame, args.out_csv, args.out_md, decimals=3, title="Clean retraining budget", note=note)
    figures.save_figure(figures.retraining_curves(runs, epochs, experiment), args.out_png, args.out_pdf)
    log.info("retraining budget: wrote %s, %s, %s and %s", args.out_csv, args.out_md, args.out_png, args.out_pdf)
    return 0


# --------------------------------------------------------------------------- gallery


def cmd_gallery(args: argparse.Namespace) -> int:
    """Fig. 2 from one clean-validation image of the store, each trigger as --triggers sets it."""
    import numpy as np

    from backdoor_eval import seeding
    from backdoor_eval.data import open_store
    from backdoor_eval.figures import fig2_trigger_gallery, save_figure
    from backdoor_eval.names import fit_command, fit_name, fit_option
    from backdoor_eval.splits import load_partitions
    from backdoor_eval.tables import display_name
    from backdoor_eval.triggers import TRIGGERS, create_trigger, needs_fit

    specs = json_object(args.triggers, "--triggers") or {name: {} for name in TRIGGERS.in_order()}
    for name, spec in specs.items():
        if not isinstance(spec, dict) or set(spec) - {"kind", "alpha", "params"}:
            raise ValueError(f'--triggers {name}: {spec!r}; allowed: {{"kind": K, "alpha": A, "params": {{...}}}}')
    fits = {}  # the fit file of each fitted trigger shown
    for kind in dict.fromkeys(spec.get("kind") or name for name, spec in specs.items()):
        if needs_fit(kind):
            fits[kind] = getattr(args, fit_name(kind), None)
            if fits[kind] is None:
                raise ValueError(
                    f"trigger {kind!r} needs its fit: give {fit_option(kind)} FILE (from `{fit_command(kind)}`)"
                )
    files = [(args.store, "store dir"), (args.partitions, "partitions file")]
    for path, what in files + [(path, f"{kind} fit file") for kind, path in fits.items()]:
        if not os.path.exists(path):
            raise FileNotFoundError(f"{what} {path} not found")
    store = open_store(args.store)
    clean_val = np.asarray(load_partitions(args.partitions)["clean_val"])
    if not 0 <= args.image_index < len(clean_val):
        raise ValueError(
            f"--image-index {args.image_index} is out of range; allowed: 0..{len(clean_val) - 1} "
            "(a position in the clean_val partition)"
        )
    image = np.asarray(store.images[int(clean_val[args.image_index])])
    triggers = []
    for name, spec in specs.items():
        kind = spec.get("kind") or name
        params = dict(spec.get("params") or {})
        if kind in fits:
            params["fit"] = fits[kind]
        trigger = create_trigger(kind, alpha=spec.get("alpha"), **params)
        triggers.append((display_name("trigger", name), trigger))  # the figure adds each alpha
    fig = fig2_trigger_gallery(image, triggers, seeding.rng(args.seed, "gallery/trigger"))
    save_figure(fig, args.out_png, args.out_pdf)
    log.info("gallery: wrote %s and %s", args.out_png, args.out_pdf)
    return 0

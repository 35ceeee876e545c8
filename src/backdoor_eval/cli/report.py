"""CLI subcommands for the report area: aggregate, tables, figures, gallery.

``aggregate`` turns the per-run summaries into ``runs.parquet`` and
``epochs.parquet``; ``tables`` and ``figures`` are functions of those files
only; ``gallery`` draws Fig. 2 from the store. pandas, matplotlib and the
package modules are imported inside the handlers so ``backdoor-eval --help``
stays fast.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# Which experiment(s) each output is built from (SPEC 6); the config's
# `outputs:` mapping, passed as --outputs JSON, overrides these.
DEFAULT_OUTPUTS: dict[str, tuple[str, ...]] = {
    "table2": ("E1", "E2"),
    "table3": ("E1", "E2"),
    "table4": ("E6",),
    "table5": ("E6",),
    "fig4": ("E3",),
    "fig5": ("E3",),
    "fig6": ("E4",),
    "fig7": ("E5",),
}
TABLES = ("table1", "table2", "table3", "table4", "table5")
FIGURES = ("fig4", "fig5", "fig6", "fig7")
GALLERY_TRIGGERS = (("Square", "bs"), ("RS", "rs"), ("Sine", "sin"), ("LV", "lv"))


def register(sub: argparse._SubParsersAction) -> None:
    """Add this area's subcommands to ``sub``."""
    p = sub.add_parser("aggregate", help="concatenate per-run summaries into runs.parquet and epochs.parquet")
    p.add_argument("--membership", required=True, help="membership JSON written by the workflow")
    p.add_argument("--out-runs", required=True, help="runs.parquet to write")
    p.add_argument("--out-epochs", required=True, help="epochs.parquet to write")
    p.set_defaults(func=cmd_aggregate)

    p = sub.add_parser("tables", help="write the paper's Tables 1-5 as .csv and .md")
    p.add_argument("--runs", required=True, help="runs.parquet from `aggregate`")
    p.add_argument("--out-dir", required=True)
    p.add_argument("--table1-store", help="store dir whose class counts make Table 1 (skipped without it)")
    p.add_argument("--table1-rate", type=float, default=0.1, help="poison rate of Table 1 (default 0.1)")
    p.add_argument("--table1-counts", help="comma-separated class counts to use instead of the store's "
                   "(the paper's Flowers counts: 710,980,734,675,904); class names still come from the store")
    p.add_argument("--only", help=f"comma-separated subset of {','.join(TABLES)}")
    p.add_argument("--outputs", help='JSON {"table2": "E1+E2", ...}: the experiment(s) each output is built from')
    p.set_defaults(func=cmd_tables)

    p = sub.add_parser("figures", help="write the paper's Figs. 4-7 as .png and .pdf")
    p.add_argument("--runs", required=True, help="runs.parquet from `aggregate`")
    p.add_argument("--epochs", required=True, help="epochs.parquet from `aggregate`")
    p.add_argument("--out-dir", required=True)
    p.add_argument("--only", help=f"comma-separated subset of {','.join(FIGURES)}")
    p.add_argument("--outputs", help='JSON {"fig4": "E3", ...}: the experiment each output is built from')
    p.set_defaults(func=cmd_figures)

    p = sub.add_parser("gallery", help="Fig. 2: one clean-validation image with each trigger, and each trigger alone")
    p.add_argument("--store", required=True, help="store dir")
    p.add_argument("--partitions", required=True, help="partitions .npz")
    p.add_argument("--lv-fit", required=True, help="LV fit .npz (from `fit-lv`)")
    p.add_argument("--image-index", type=int, default=0, help="position in the clean_val partition (default 0)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random square's position (default 0)")
    p.add_argument("--out", required=True, help="FILE.png (FILE.pdf is written too)")
    p.set_defaults(func=cmd_gallery)


# --------------------------------------------------------------------------- argument helpers


def parse_only(only: str | None, allowed: tuple[str, ...]) -> list[str]:
    """The outputs to make: all of ``allowed``, or the comma-separated ``only`` subset (validated)."""
    if not only:
        return list(allowed)
    names = [name.strip() for name in only.split(",") if name.strip()]
    bad = [name for name in names if name not in allowed]
    if bad or not names:
        raise ValueError(f"--only {only!r} names {', '.join(bad) or 'nothing'}; allowed: {', '.join(allowed)}")
    return [name for name in allowed if name in names]


def parse_outputs(text: str | None) -> dict[str, tuple[str, ...]]:
    """:data:`DEFAULT_OUTPUTS` updated by the JSON mapping ``text`` (values "E1+E2" or ["E1", "E2"])."""
    outputs = dict(DEFAULT_OUTPUTS)
    if not text:
        return outputs
    try:
        given = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(
            f"--outputs {text!r} is not JSON ({exc}); allowed: a JSON object like {{\"table2\": \"E1+E2\"}}"
        ) from None
    if not isinstance(given, dict):
        raise ValueError(f"--outputs {text!r} is not a JSON object; allowed: {{\"table2\": \"E1+E2\", ...}}")
    for name, value in given.items():
        if name not in DEFAULT_OUTPUTS:
            continue  # outputs of other commands (table1, fig2) are not built from experiments
        experiments = value.split("+") if isinstance(value, str) else value
        if not isinstance(experiments, list | tuple) or not experiments or not all(
            isinstance(e, str) and e.strip() for e in experiments
        ):
            raise ValueError(f"--outputs {name}: {value!r}; allowed: \"E1\", \"E1+E2\" or a list of experiment names")
        outputs[name] = tuple(e.strip() for e in experiments)
    return outputs


def _read_parquet(path: str, what: str):
    import pandas as pd

    if not Path(path).is_file():
        raise FileNotFoundError(f"{what} {path} not found")
    return pd.read_parquet(path)


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
            log.warning("aggregate: experiment %s lists no runs; its tables and figures will be skipped", experiment)
        for run_id in run_ids:
            if run_id in summaries:
                continue  # a run shared by two experiments is read once
            paths = files.get(run_id)
            if not isinstance(paths, dict) or "summary" not in paths or "epochs" not in paths:
                raise ValueError(
                    f"run {run_id!r} (experiment {experiment}) has no 'summary'/'epochs' paths in the membership 'runs'"
                )
            # Relative paths are relative to the working directory (Snakemake's workdir).
            summaries[run_id] = _read_parquet(paths["summary"], f"run {run_id!r}: summary file")
            epochs[run_id] = _read_parquet(paths["epochs"], f"run {run_id!r}: epochs file")
    runs_frame, epochs_frame = combine_runs(membership, summaries, epochs)
    write_parquet(args.out_runs, runs_frame)
    write_parquet(args.out_epochs, epochs_frame)
    log.info(
        "aggregate: %d rows (%d runs, %d experiments) -> %s; %d epoch rows -> %s",
        len(runs_frame), len(summaries), runs_frame["experiment"].nunique(), args.out_runs,
        len(epochs_frame), args.out_epochs,
    )
    return 0


# --------------------------------------------------------------------------- tables


def _held(runs) -> set[str]:
    """The experiments that have rows in ``runs``."""
    return set(map(str, runs["experiment"].unique())) if "experiment" in runs.columns else set()


def _built_from(experiments) -> str:
    return "Built from experiment(s) " + ", ".join(e for e in experiments if e) + " of runs.parquet."


def cmd_tables(args: argparse.Namespace) -> int:
    """Write the selected tables under --out-dir, skipping (logged) those whose experiments are absent."""
    from backdoor_eval import tables

    wanted = parse_only(args.only, TABLES)
    outputs = parse_outputs(args.outputs)
    out_dir = Path(args.out_dir)
    runs = _read_parquet(args.runs, "runs file") if set(wanted) - {"table1"} else None

    if "table1" in wanted:
        if args.table1_store:
            frame, counted = _table1_from_store(args.table1_store, args.table1_rate, args.table1_counts)
            note = tables.TABLE_NOTES["table1"] + f" Class counts: {counted}."
            tables.write_table(frame, out_dir / "table1", decimals=tables.table1_decimals(frame),
                               title=f"Table 1: poison statistics, poison rate {args.table1_rate:g}", note=note)
            log.info("tables: wrote table1 (.csv, .md) to %s", out_dir)
        else:
            log.info("tables: skipped table1 (no --table1-store given)")

    for name in ("table2", "table3"):
        if name not in wanted:
            continue
        experiments = outputs[name]
        no_name = experiments[0]
        yes_name = experiments[1] if len(experiments) > 1 else None
        held = _held(runs)
        no = no_name if no_name in held else None
        yes = yes_name if yes_name in held else None
        if no is None and yes is None:
            log.info("tables: skipped %s (experiments %s not in %s)", name, "+".join(experiments), args.runs)
            continue
        for half, requested, got in (("No", no_name, no), ("Yes", yes_name, yes)):
            if requested and got is None:
                log.info("tables: %s without its %r rows (experiment %s not in %s)", name, half, requested, args.runs)
        build = getattr(tables, name)
        title = "Table 2: adversarial success" if name == "table2" else "Table 3: accuracy"
        note = tables.TABLE_NOTES[name] + " " + _built_from((no, yes))
        tables.write_table(build(runs, no=no, yes=yes), out_dir / name, title=f"{title} before/after clean retraining",
                           note=note)
        tables.write_table(build(runs, no=no, yes=yes, statistic="count"), out_dir / f"{name}_n",
                           title=f"{name}: number of runs per cell", note=_built_from((no, yes)))
        log.info("tables: wrote %s and %s_n (.csv, .md) to %s", name, name, out_dir)

    for name, title in (("table4", "Table 4: accuracy, one-to-one vs many-to-one"),
                        ("table5", "Table 5: adversarial success, one-to-one vs many-to-one")):
        if name not in wanted:
            continue
        experiment = outputs[name][0]
        if experiment not in _held(runs):
            log.info("tables: skipped %s (experiment %s not in %s)", name, experiment, args.runs)
            continue
        frame = getattr(tables, name)(runs, experiment=experiment)
        tables.write_table(frame, out_dir / name, title=title,
                           note=tables.TABLE_NOTES[name] + " " + _built_from((experiment,)))
        log.info("tables: wrote %s (.csv, .md) to %s", name, out_dir)
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
            raise ValueError(f"--table1-counts {counts!r} is not a comma-separated list of integers") from None
        if len(class_counts) != len(names):
            raise ValueError(
                f"--table1-counts gives {len(class_counts)} counts but the store has {len(names)} classes ({', '.join(names)})"
            )
        counted = f"as given in the config ({counts})"
    else:
        # Counting the labels needs no assumption about the manifest's layout.
        class_counts = [int(c) for c in np.bincount(np.asarray(store.labels), minlength=len(names))]
        counted = f"all images of the store {store_dir}"
    return table1(class_counts, names, poison_rate), counted


# --------------------------------------------------------------------------- figures


def cmd_figures(args: argparse.Namespace) -> int:
    """Write the selected figures under --out-dir, skipping (logged) those whose experiment is absent."""
    from backdoor_eval import figures

    wanted = parse_only(args.only, FIGURES)
    outputs = parse_outputs(args.outputs)
    runs = _read_parquet(args.runs, "runs file")
    # Figs. 4-7 use the kept-epoch metrics; the per-epoch file is checked so the
    # rule's dependency is real, and is there for per-epoch figures.
    if not Path(args.epochs).is_file():
        raise FileNotFoundError(f"epochs file {args.epochs} not found")
    builders = {
        "fig4": figures.fig4_regularization_heatmaps,
        "fig5": figures.fig5_regularization_boxplots,
        "fig6": figures.fig6_alpha,
        "fig7": figures.fig7_poison_rate,
    }
    for name in wanted:
        experiment = outputs[name][0]
        if experiment not in _held(runs):
            log.info("figures: skipped %s (experiment %s not in %s)", name, experiment, args.runs)
            continue
        fig = builders[name](runs, experiment=experiment)
        figures.save_figure(fig, Path(args.out_dir) / name)
        log.info("figures: wrote %s (.png, .pdf) to %s", name, args.out_dir)
    return 0


# --------------------------------------------------------------------------- gallery


def cmd_gallery(args: argparse.Namespace) -> int:
    """Fig. 2 from one clean-validation image of the store, each trigger at its default alpha."""
    import numpy as np

    from backdoor_eval.data import open_store
    from backdoor_eval.figures import fig2_trigger_gallery, save_figure
    from backdoor_eval.splits import load_partitions
    from backdoor_eval.triggers import create_trigger

    out = Path(args.out)
    if out.suffix != ".png":
        raise ValueError(f"--out {args.out!r} does not end in .png; allowed: FILE.png (FILE.pdf is written beside it)")
    for path, what in ((args.store, "store dir"), (args.partitions, "partitions file"), (args.lv_fit, "LV fit file")):
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
    triggers = [
        (label, create_trigger(name, fit=args.lv_fit) if name == "lv" else create_trigger(name))
        for label, name in GALLERY_TRIGGERS
    ]
    fig = fig2_trigger_gallery(image, triggers, np.random.default_rng(args.seed))
    save_figure(fig, out.with_suffix(""))
    log.info("gallery: wrote %s and %s", out, out.with_suffix(".pdf"))
    return 0

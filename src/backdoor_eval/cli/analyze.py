"""CLI subcommands of the analysis area (docs/detection.md): ``analyze``, ``analysis-membership``,
``aggregate-detections``, ``aggregate-defenses``, ``detection-table``, ``defense-table``, ``detection-figure``.

Argument parsing only; every file read or written is named on the command
line. Filter-then-retrain is ``backdoor-eval train --exclude``.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from .common import json_object, positive_int, read_parquet

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    """Add this area's subcommands to ``sub``."""
    p = sub.add_parser("analyze", help="run one registered analysis (detector) on one trained run")
    p.add_argument("--method", required=True, help="analysis name (backdoor_eval.analyses.ANALYSES)")
    p.add_argument("--params", default="", help="JSON: the analysis's parameters (unset ones take its defaults)")
    p.add_argument("--store", required=True, type=Path, help="canonical dataset store folder")
    p.add_argument("--partitions", required=True, type=Path, help="partitions .npz of the run's split")
    p.add_argument("--poisoned", required=True, type=Path, help="the run's poison overlay folder")
    p.add_argument("--run-params", required=True, help="JSON: run_id and the run's factors")
    p.add_argument("--model-file", type=Path, help="the run's poison-phase model.pt (analyses that need the model)")
    p.add_argument("--model", help="model name (MODELS registry) the model.pt holds")
    p.add_argument("--model-params", default="", help="JSON: model kwargs (pretrained and weights are ignored)")
    p.add_argument("--train-params", default="", help="JSON: the run's TrainConfig fields (input size, batch size)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--threads", type=positive_int, help="CPU threads for torch (Snakemake's {threads})")
    p.add_argument("--gpu-lock-dir", type=Path, help="take a GPU slot (CUDA_VISIBLE_DEVICES) via lock files here")
    p.add_argument("--out-result", required=True, type=Path, help="the result row .parquet to write")
    p.add_argument("--out-details", required=True, type=Path, help="the per-sample arrays .npz to write")
    p.set_defaults(func=cmd_analyze)

    p = sub.add_parser("analysis-membership", help="write which runs each experiment analyses, and their result files")
    p.add_argument("--config-json", required=True, help="the config as a JSON object (what the workflow passes)")
    p.add_argument("--results-dir", required=True, help="results folder of the config")
    p.add_argument("--out", required=True, help="output JSON file")
    p.set_defaults(func=cmd_analysis_membership)

    for name, what in (("aggregate-detections", "detections"), ("aggregate-defenses", "defenses")):
        p = sub.add_parser(name, help=f"gather the runs' {what} into one tidy .parquet")
        p.add_argument("--membership", required=True, help="analyses.json written by `analysis-membership`")
        p.add_argument("--out", required=True, help=f"{what}.parquet to write")
        if what == "defenses":
            p.add_argument(
                "--out-epochs", help="defense_epochs.parquet to write: every epoch of the filtered phases (optional)"
            )
        p.set_defaults(func=cmd_aggregate_detections if what == "detections" else cmd_aggregate_defenses)

    p = sub.add_parser("detection-table", help="detection AUROC, TPR and FPR by method x dataset x model x trigger")
    p.add_argument("--detections", required=True, help="detections.parquet")
    p.add_argument("--out-csv", required=True, help="table .csv to write")
    p.add_argument("--out-md", required=True, help="table .md to write")
    p.set_defaults(func=cmd_detection_table)

    p = sub.add_parser("defense-table", help="ASR and accuracy: no defense, clean retraining, filter-then-retrain")
    p.add_argument("--defenses", required=True, help="defenses.parquet")
    p.add_argument("--runs", required=True, help="runs.parquet")
    p.add_argument("--out-csv", required=True, help="table .csv to write")
    p.add_argument("--out-md", required=True, help="table .md to write")
    p.set_defaults(func=cmd_defense_table)

    p = sub.add_parser("detection-figure", help="detection AUROC against a factor of one experiment")
    p.add_argument("--detections", required=True, help="detections.parquet")
    p.add_argument("--experiment", required=True, help="the experiment whose runs it plots")
    p.add_argument("--factor", required=True, choices=("poison_rate", "alpha", "regularizer"))
    p.add_argument("--out-png", required=True, help="figure .png to write")
    p.add_argument("--out-pdf", required=True, help="figure .pdf to write")
    p.set_defaults(func=cmd_detection_figure)


def cmd_analyze(args: argparse.Namespace) -> int:
    from backdoor_eval.analyses.job import AnalysisJob, run_analysis

    run_analysis(
        AnalysisJob(
            method=args.method,
            params=json_object(args.params, "--params"),
            store=args.store,
            partitions=args.partitions,
            poisoned=args.poisoned,
            run_params=json_object(args.run_params, "--run-params"),
            out_result=args.out_result,
            out_details=args.out_details,
            model_file=args.model_file,
            model=args.model,
            model_params=json_object(args.model_params, "--model-params"),
            train_params=json_object(args.train_params, "--train-params"),
            device=args.device,
            threads=args.threads,
            gpu_lock_dir=args.gpu_lock_dir,
        )
    )
    return 0


def cmd_analysis_membership(args: argparse.Namespace) -> int:
    from backdoor_eval import validation
    from backdoor_eval.analyses import plan
    from backdoor_eval.io import write_json

    config = json_object(args.config_json, "--config-json")
    validation.validate(config)
    plan.validate(config)
    write_json(args.out, plan.membership(config, args.results_dir))
    return 0


def _membership(path: str) -> dict:
    from backdoor_eval.io import read_json

    if not Path(path).is_file():
        raise FileNotFoundError(f"analysis membership file {path} not found")
    document = read_json(path, "analysis membership", "delete it and run the workflow again")
    if not isinstance(document, dict) or not isinstance(document.get("experiments"), dict):
        raise ValueError(f"{path} is not an analysis membership document (no 'experiments' mapping)")
    return document


def cmd_aggregate_detections(args: argparse.Namespace) -> int:
    from backdoor_eval.analyses.report import combine_detections
    from backdoor_eval.io import write_parquet

    membership = _membership(args.membership)
    results = {
        (run_id, method): read_parquet(path, f"run {run_id!r}: {method} result")
        for run_id, files in membership["results"].items()
        for method, path in files.items()
    }
    frame = combine_detections(membership, results)
    write_parquet(args.out, frame)
    log.info("aggregate-detections: %d rows -> %s", len(frame), args.out)
    return 0


def cmd_aggregate_defenses(args: argparse.Namespace) -> int:
    from backdoor_eval.analyses.report import defense_rows
    from backdoor_eval.io import read_json, write_parquet

    membership = _membership(args.membership)
    phases = {}
    for run_id, files in membership["filtered"].items():
        for method, paths in files.items():
            final = read_json(paths["final"], f"run {run_id!r}: {method} filtered final.json")
            phases[(run_id, method)] = (final, read_parquet(paths["epochs"], f"run {run_id!r}: {method} epochs"))
    frame, epochs = defense_rows(membership, phases)
    write_parquet(args.out, frame)
    log.info("aggregate-defenses: %d rows -> %s", len(frame), args.out)
    if args.out_epochs:
        write_parquet(args.out_epochs, epochs)
        log.info("aggregate-defenses: %d epoch rows -> %s", len(epochs), args.out_epochs)
    return 0


def cmd_detection_table(args: argparse.Namespace) -> int:
    from backdoor_eval import tables
    from backdoor_eval.analyses.report import detection_table

    frame = detection_table(read_parquet(args.detections, "detections file"))
    note = (
        "AUROC of each method's score for poisoned against clean poison-train samples of the poison class; "
        "TPR and FPR at the method's own removal rule (STRIP: triggered adversarial-test inputs rejected, and "
        "untriggered ones rejected). Mean ± std over seeds and poison classes; docs/detection.md."
    )
    tables.write_table(frame, args.out_csv, args.out_md, decimals={"runs": 0}, title="Detection", note=note)
    return 0


def cmd_defense_table(args: argparse.Namespace) -> int:
    from backdoor_eval import tables
    from backdoor_eval.analyses.report import defense_table

    frame = defense_table(read_parquet(args.defenses, "defenses file"), read_parquet(args.runs, "runs file"))
    note = (
        "Adversarial success rate (ASR) and clean-validation accuracy, mean over seeds and poison classes: "
        "the poisoned model (none), after the paper's clean retraining (where the run was retrained), and "
        "trained again from the same initial weights without the samples each method flagged (filter: ...); "
        "docs/detection.md."
    )
    tables.write_table(
        frame, args.out_csv, args.out_md, title="Filter-then-retrain against clean retraining", note=note
    )
    return 0


def cmd_detection_figure(args: argparse.Namespace) -> int:
    from backdoor_eval.analyses.report import detection_figure
    from backdoor_eval.figures import save_figure

    figure = detection_figure(read_parquet(args.detections, "detections file"), args.experiment, args.factor)
    save_figure(figure, args.out_png, args.out_pdf)
    return 0

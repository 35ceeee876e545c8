"""CLI subcommands of the training engine: ``train``, ``retrain``, ``summarize``, ``pretrain``.

Argument parsing only: ``train``/``retrain`` hand a
:class:`backdoor_eval.phase.PhaseJob` to :func:`backdoor_eval.phase.run_phase`
(which takes the phase's lock, then a GPU slot with ``--gpu-lock-dir``);
``summarize`` collects a run's phases into its tidy tables
(:func:`backdoor_eval.evaluate.summarize`). Every file read or written is
named on the command line.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from backdoor_eval.names import CLEAN_PHASE, POISON_PHASE

from .common import json_object, positive_int, seed_int


def register(sub: argparse._SubParsersAction) -> None:
    """Add this area's subcommands to ``sub``."""
    for name, phase, help_text in (
        ("train", POISON_PHASE, "train on the poisoned set with early stopping (phase 'poison')"),
        (
            "retrain",
            CLEAN_PHASE,
            "fine-tune a poisoned model on clean-train for a fixed number of epochs (phase 'clean')",
        ),
    ):
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--store", required=True, type=Path, help="canonical dataset store folder")
        p.add_argument("--partitions", required=True, type=Path, help="partitions .npz of the run's split")
        p.add_argument("--poisoned", required=True, type=Path, help="poison overlay folder")
        if phase == CLEAN_PHASE:
            p.add_argument("--init-model", required=True, type=Path, help="the poison phase's model.pt")
        p.add_argument("--model", required=True, help="model name (MODELS registry)")
        p.add_argument("--model-params", default="", help="JSON: pretrained, weights, model kwargs")
        p.add_argument("--regularizer", default="none", help="regularizer name (REGULARIZERS registry)")
        p.add_argument("--regularizer-params", default="", help="JSON: weight and hyper-parameters")
        p.add_argument("--train-params", default="", help="JSON: TrainConfig fields")
        p.add_argument("--seed", required=True, type=seed_int, help="the run's seed (a whole number >= 0)")
        p.add_argument("--out-model", required=True, type=Path, help="model.pt to write (the kept weights)")
        p.add_argument("--out-epochs", required=True, type=Path, help="epochs.parquet to write (one row per epoch)")
        p.add_argument(
            "--out-final", required=True, type=Path, help="final.json to write (last: it marks the phase done)"
        )
        p.add_argument("--checkpoint", type=Path, help="per-epoch checkpoint file (resume after a kill)")
        p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
        p.add_argument("--threads", type=positive_int, help="CPU threads for torch (Snakemake's {threads})")
        p.add_argument("--gpu-lock-dir", type=Path, help="take a GPU slot (CUDA_VISIBLE_DEVICES) via lock files here")
        p.add_argument(
            "--jobs-per-gpu",
            type=positive_int,
            help="GPU slots per device, i.e. jobs sharing one GPU (default: $BACKDOOR_EVAL_JOBS_PER_GPU, else 1)",
        )
        p.add_argument(
            "--compile-cache-dir", type=Path, help="torch.compile's cache (TORCHINDUCTOR_CACHE_DIR) shared by jobs"
        )
        if phase == POISON_PHASE:
            p.add_argument(
                "--exclude",
                type=Path,
                help="a detector's .npz: leave its flagged poison-train images out (filter-then-retrain)",
            )
        p.set_defaults(func=cmd_train, phase=phase)

    p = sub.add_parser("summarize", help="collect a run's phases into its tidy summary and epochs tables")
    p.add_argument("--poison-final", required=True, type=Path, help="the poison phase's final.json")
    p.add_argument("--poison-epochs", required=True, type=Path, help="the poison phase's epochs.parquet")
    p.add_argument("--clean-final", type=Path, help="the clean phase's final.json, if the run was retrained")
    p.add_argument("--clean-epochs", type=Path, help="the clean phase's epochs.parquet, if the run was retrained")
    p.add_argument("--run-params", required=True, help="JSON of the run parameters")
    p.add_argument("--out-summary", required=True, type=Path, help="summary .parquet to write (one row per phase)")
    p.add_argument(
        "--out-epochs", required=True, type=Path, help="epochs .parquet to write (one row per phase x epoch)"
    )
    p.set_defaults(func=cmd_summarize)

    help_text = "train a backbone once on a dataset store, for the models that start from it (init:)"
    p = sub.add_parser("pretrain", help=help_text, description=help_text)
    p.add_argument("--name", required=True, help="the pretraining's name in the config (for messages and the manifest)")
    p.add_argument("--store", required=True, type=Path, help="canonical dataset store folder to train on")
    p.add_argument("--model", required=True, help="architecture (MODELS registry name or timm:<name>)")
    p.add_argument("--model-params", default="", help="JSON: model kwargs")
    p.add_argument("--train-params", default="", help="JSON: TrainConfig fields")
    p.add_argument("--seed", default=0, type=seed_int, help="seed of the held-out draw, init, order (>= 0)")
    p.add_argument("--holdout", default=0.1, type=float, help="share of each class held out for early stopping")
    p.add_argument("--out-weights", required=True, type=Path, help="backbone .safetensors to write")
    p.add_argument("--out-manifest", required=True, type=Path, help="manifest .json to write (last)")
    p.add_argument("--checkpoint", type=Path, help="per-epoch checkpoint file (resume after a kill)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--threads", type=positive_int, help="CPU threads for torch (Snakemake's {threads})")
    p.add_argument("--gpu-lock-dir", type=Path, help="take a GPU slot (CUDA_VISIBLE_DEVICES) via lock files here")
    p.set_defaults(func=cmd_pretrain)


def cmd_train(args: argparse.Namespace) -> int:
    """``train`` and ``retrain``: one phase of one run."""
    from backdoor_eval.phase import PhaseJob, run_phase

    job = PhaseJob(
        phase=args.phase,
        store=args.store,
        partitions=args.partitions,
        poisoned=args.poisoned,
        init_model=getattr(args, "init_model", None),
        model=args.model,
        model_params=json_object(args.model_params, "--model-params"),
        regularizer=args.regularizer,
        regularizer_params=json_object(args.regularizer_params, "--regularizer-params"),
        train_params=json_object(args.train_params, "--train-params"),
        seed=args.seed,
        out_model=args.out_model,
        out_epochs=args.out_epochs,
        out_final=args.out_final,
        checkpoint=args.checkpoint,
        device=args.device,
        threads=args.threads,
        gpu_lock_dir=args.gpu_lock_dir,
        jobs_per_gpu=args.jobs_per_gpu,
        compile_cache_dir=args.compile_cache_dir,
        exclude=getattr(args, "exclude", None),
    )
    run_phase(job)
    return 0


def cmd_summarize(args: argparse.Namespace) -> int:
    import pandas as pd

    from backdoor_eval.evaluate import summarize
    from backdoor_eval.io import read_json, write_parquet

    if (args.clean_final is None) != (args.clean_epochs is None):
        raise ValueError("give both --clean-final and --clean-epochs, or neither")
    phases = []
    for final_path, epochs_path in ((args.poison_final, args.poison_epochs), (args.clean_final, args.clean_epochs)):
        if final_path is None:
            continue
        for path in (final_path, epochs_path):
            if not path.is_file():
                raise FileNotFoundError(f"{path} does not exist: that phase has not finished")
        phases.append((read_json(final_path), pd.read_parquet(epochs_path)))
    summary, epochs = summarize(json_object(args.run_params, "--run-params"), phases)
    write_parquet(args.out_summary, summary)
    write_parquet(args.out_epochs, epochs)
    return 0


def cmd_pretrain(args: argparse.Namespace) -> int:
    """``pretrain``: one backbone for the models whose config entry says ``init: <name>``."""
    from backdoor_eval.pretrain import PretrainJob, run_pretrain

    if not 0 < args.holdout < 1:
        raise ValueError(f"--holdout {args.holdout!r} is not a share; allowed: 0 < holdout < 1")
    run_pretrain(
        PretrainJob(
            name=args.name,
            store=args.store,
            arch=args.model,
            out_weights=args.out_weights,
            out_manifest=args.out_manifest,
            model_params=json_object(args.model_params, "--model-params"),
            train_params=json_object(args.train_params, "--train-params"),
            seed=args.seed,
            holdout=args.holdout,
            checkpoint=args.checkpoint,
            device=args.device,
            threads=args.threads,
            gpu_lock_dir=args.gpu_lock_dir,
        )
    )
    return 0

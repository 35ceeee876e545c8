"""CLI subcommands of the training engine: ``train``, ``retrain``, ``evaluate``.

These are the I/O edge of ``backdoor_eval.train``: they read the store, the
partitions and the poison overlay, build the model and regularizer from the
registries, run one phase and write ``model.pt``, ``epochs.parquet`` and
``final.json`` atomically (``final.json`` last, so its presence means done).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import os
import time
from pathlib import Path

from .common import json_object

log = logging.getLogger("backdoor_eval.engine")


def register(sub: argparse._SubParsersAction) -> None:
    for name, help_text in (
        ("train", "train on the poisoned set with early stopping (phase 'poison')"),
        ("retrain", "fine-tune a poisoned model on clean-train for a fixed number of epochs (phase 'clean')"),
    ):
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--store", required=True, type=Path, help="canonical dataset store folder")
        p.add_argument("--partitions", required=True, type=Path, help="partitions .npz of the run's seed")
        p.add_argument("--poisoned", required=True, type=Path, help="poison overlay folder")
        p.add_argument("--model", required=True, help="model name (MODELS registry)")
        p.add_argument("--model-params", default="", help="JSON: pretrained, weights, model kwargs")
        p.add_argument("--regularizer", default="none", help="regularizer name (REGULARIZERS registry)")
        p.add_argument("--regularizer-params", default="", help="JSON: weight and hyper-parameters")
        p.add_argument("--train-params", default="", help="JSON: TrainConfig fields")
        p.add_argument("--seed", required=True, type=int)
        p.add_argument("--out", required=True, type=Path, help="output folder (model.pt, epochs.parquet, final.json)")
        p.add_argument("--checkpoints", type=Path, help="folder for per-epoch checkpoints (resume)")
        p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
        p.add_argument("--threads", type=int, help="CPU threads for torch (Snakemake's {threads})")
        p.add_argument("--gpu-lock-dir", type=Path, help="take a GPU slot (CUDA_VISIBLE_DEVICES) via lock files here")
        if name == "retrain":
            p.add_argument("--init", required=True, type=Path, help="the poison phase's output folder")
        p.set_defaults(func=_cmd_phase, phase="poison" if name == "train" else "clean")

    p = sub.add_parser("evaluate", help="collect a run's phases into its tidy summary and epochs tables")
    p.add_argument("--poison", required=True, type=Path, help="the poison phase's output folder")
    p.add_argument("--clean", type=Path, help="the clean-retraining phase's output folder, if any")
    p.add_argument("--run-params", required=True, help="JSON of the run parameters")
    p.add_argument("--out", required=True, type=Path, help="summary .parquet (one row per phase)")
    p.add_argument("--out-epochs", type=Path, help="epochs .parquet (default: epochs.parquet beside --out)")
    p.set_defaults(func=_cmd_evaluate)


def _cmd_phase(args: argparse.Namespace) -> int:
    for option in ("model_params", "regularizer_params", "train_params"):
        setattr(args, option, json_object(getattr(args, option), "--" + option.replace("_", "-")))
    gpu_context: contextlib.AbstractContextManager = contextlib.nullcontext(None)
    if args.gpu_lock_dir is not None:
        from ..gpus import gpu_slot

        gpu_context = gpu_slot(lock_dir=args.gpu_lock_dir)
    with gpu_context as slot:
        return run_phase(args, slot)


def run_phase(args: argparse.Namespace, gpu_slot_index: int | None = None) -> int:
    import numpy as np
    import pandas as pd
    import torch

    from .. import train as engine
    from ..data import open_store
    from ..io import atomic_path, write_json, write_parquet
    from ..models import create_model
    from ..poison import load_poisoned
    from ..regularizers import create_regularizer
    from ..splits import load_partitions

    tic = time.perf_counter()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = engine.TrainConfig.from_dict(args.train_params)
    device = engine.pick_device(args.device)
    engine.set_determinism(cfg, device)

    store = open_store(args.store)
    partitions = load_partitions(args.partitions)
    data = load_poisoned(store, partitions, args.poisoned)
    num_classes = len(store.class_names)

    model_params = dict(args.model_params)
    pretrained = model_params.pop("pretrained", False)
    weights = model_params.pop("weights", None)
    if args.phase == "clean":
        init = torch.load(args.init / "model.pt", map_location="cpu", weights_only=False)
        if init.get("model") != args.model:
            raise ValueError(f"--init {args.init} holds a {init.get('model')!r} model, not {args.model!r}")
        torch.manual_seed(args.seed)
        model = create_model(args.model, num_classes=num_classes, pretrained=False, **model_params)
        model.load_state_dict(init["state_dict"])
    else:
        # Head initialisation is part of the run: seed it.
        torch.manual_seed(engine.seed_for(args.seed, "init"))
        model = create_model(args.model, num_classes=num_classes, pretrained=pretrained, weights=weights, **model_params)
    regularizer = create_regularizer(args.regularizer, **args.regularizer_params)

    def tensors(name: str):
        images, labels = data.sets[name]
        return (
            engine.to_device_uint8(images, device, cfg.data_on_device),
            torch.as_tensor(np.asarray(labels), dtype=torch.long).to(device if cfg.data_on_device else "cpu"),
        )

    adv_clean = engine.to_device_uint8(data.adv_test_images, device, True)
    sets = engine.EvalSets(
        poison_val=tensors("poison_val"),
        clean_val=tensors("clean_val"),
        adv_clean=adv_clean,
        adv_triggered=engine.triggered_uint8(data.trigger, adv_clean, data.adv_seed),
        adv_source_mask=torch.as_tensor(np.asarray(data.adv_test_source_mask, dtype=bool)),
        poison_class=int(data.poison_class),
    )
    train_set = tensors("poison_train" if args.phase == "poison" else "clean_train")

    run = engine.Engine(model, regularizer, cfg, num_classes, device, args.seed)
    checkpoint = args.checkpoints / f"{args.phase}.pt" if args.checkpoints else None
    key = engine.fingerprint(
        args.phase, str(args.poisoned.resolve()), args.model, args.model_params, args.regularizer,
        args.regularizer_params, dataclasses.asdict(cfg), args.seed, str(device),
        str(args.init.resolve()) if args.phase == "clean" else None,
    )
    result = run.run_phase(args.phase, train_set, sets, checkpoint, key)

    history = pd.DataFrame(result.history)
    kept = history[history["epoch"] == result.kept_epoch].iloc[0].to_dict()
    final = {
        "phase": args.phase,
        "epoch": result.kept_epoch,
        "best_epoch": result.kept_epoch,
        "epochs_run": result.epochs_run,
        "stopped_early": result.stopped_early,
        "resumed_from_epoch": result.resumed_from,
        **{m: kept[m] for m in engine.METRIC_COLUMNS},
        "num_train_images": int(len(train_set[1])),
        "device": str(device),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "gpu_slot": gpu_slot_index,
        "seconds_total": time.perf_counter() - tic,
        "train_params": dataclasses.asdict(cfg),
        "model": args.model,
        "regularizer": args.regularizer,
        "regularizer_config": getattr(regularizer, "config", None),
        "seed": args.seed,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    with atomic_path(args.out / "model.pt") as tmp:
        torch.save(
            {"model": args.model, "model_params": model_params, "num_classes": num_classes,
             "state_dict": result.best_state},
            tmp,
        )
    write_parquet(args.out / "epochs.parquet", history)
    write_json(args.out / "final.json", final)
    if checkpoint is not None and checkpoint.exists():
        checkpoint.unlink()  # the phase is done; its outputs replace the checkpoint
    log.info("%s phase done: kept epoch %d, ASR %.4f", args.phase, result.kept_epoch, final["adversarial_success_rate"])
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    import pandas as pd

    from ..evaluate import summarize
    from ..io import read_json, write_parquet

    run_params = json_object(args.run_params, "--run-params")
    phases = []
    for folder in [args.poison] + ([args.clean] if args.clean else []):
        final_path = folder / "final.json"
        if not final_path.exists():
            raise FileNotFoundError(f"{final_path} does not exist: the phase in {folder} has not finished")
        phases.append((read_json(final_path), pd.read_parquet(folder / "epochs.parquet")))
    summary, epochs = summarize(run_params, phases)
    write_parquet(args.out, summary)
    write_parquet(args.out_epochs or args.out.with_name("epochs.parquet"), epochs)
    return 0

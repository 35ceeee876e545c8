"""What a config's grid costs in device hours: runs, epochs and images from the config, seconds per image measured here.

    .venv/bin/python benchmarks/grid_cost.py --config config/quickstart.yaml
    .venv/bin/python benchmarks/grid_cost.py --config config/config.yaml --images 2 --flops-gpu h100
    .venv/bin/python benchmarks/grid_cost.py --config config/config.yaml --models resnet50 --images 16

For each (dataset, model) of the grid it prints:

- the training runs and retrain jobs, from the workflow's own expansion
  (``backdoor_eval.experiments.expand``/``union``/``retrain_runs``, as
  ``workflow/rules/common.smk`` does);
- the expected epochs of a run: the poison phase's epochs run (``--epochs paper``:
  the paper's average early-stopping epoch of the model, section 4.1 (ResNet-50 14.6,
  NASNet-A Large 17.35, NASNet-A Mobile 26.5), plus the ``patience`` epochs that follow
  the best one, at most ``max_epochs``; a model the paper did not train, or
  ``--epochs max``, runs ``max_epochs``; ``--poison-epochs N`` sets it) and the clean
  phase's ``retrain_epochs``; every phase evaluates once more than it trains (epoch 0);
- the images of an epoch: the partition sizes of the dataset's class counts under the
  package's 76/19/5 then 80/20 split (``backdoor_eval.splits.partition_counts``):
  poison-train (training) or clean-train (retraining), and every epoch's evaluation
  sets, poison-val, clean-val and the adversarial test with and without trigger
  (the non-poison-class images, so per run);
- the seconds per image of a training step and of evaluation, measured on this machine's
  device through the engine's own path (``Engine.train_epoch``, ``Engine.predict``:
  gather, convert, resize, forward, loss, backward, Adam) with the config's batch sizes,
  input sizes, amp and channels-last, on random images of the dataset's size, once per
  (model, image size, input size, device); a timm model is built without pretrained
  weights (the same cost, no download);
- the device hours: runs x (train images x train s/img + eval images x eval s/img),
  plus the retrain jobs likewise. Job start-up, data loading and checkpoints are not
  in it (seconds per job against minutes to hours of epochs on the paper grid).

On a CPU it is the CPU estimate (one job at a time with ``--threads``); run it on a GPU
and it is that GPU's. ``--flops-gpu h100`` adds an estimate from the FLOPs per image
(``torch.utils.flop_counter.FlopCounterMode`` over the same engine path) at a named
GPU's dense bf16 peak and the utilisations of ``--utilisation`` (a training image as 3 forwards). A (dataset, model)
left out by ``--models`` is listed as not measured and left out of the totals. On a CPU,
NASNet-A Large at 331 px holds about 1 GB of activations per image timed: ``--images 2`` for
the paper grid (8 images were killed for memory on a 23 GB machine).
``--json FILE`` writes every figure for other scripts (tests, docs).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from backdoor_eval import configview as cv
from backdoor_eval import experiments as ex
from backdoor_eval.config import load_config
from backdoor_eval.layout import Layout

#: The paper's average early-stopping epoch per architecture (section 4.1, E1 over 180 runs).
PAPER_BEST_EPOCH = {"resnet50": 14.6, "nasnet_large": 17.35, "nasnet_mobile": 26.5}

#: Dense bf16 tensor-core peak of named GPUs, TFLOP/s (vendor data sheets, SXM parts, without sparsity).
GPU_PEAK_TFLOPS = {"h100": 989.0, "h200": 989.0, "a100": 312.0}

#: CIFAR-10's images are 32 x 32; other readers name their size in their parameters (``size``).
_FIXED_IMAGE_SIZE = {"cifar10": 32}


# ------------------------------------------------------------------------------------ the grid


@dataclass
class Cell:
    """One (dataset, model) of the grid: what it trains, and on how many images."""

    dataset: str
    model: str
    arch: str
    runs: int
    retrain_jobs: int
    image_size: int
    input_size: int | None  # the config's train.input_size (None: the native size)
    batch_size: int
    eval_batch_size: int
    poison_epochs: float  # expected epochs run by the poison phase (training epochs)
    poison_epochs_source: str
    retrain_epochs: int
    poison_train: int
    clean_train: int
    eval_per_epoch: float  # mean over the runs: poison-val + clean-val + 2 x adversarial test
    train_images: float = 0.0  # over all runs and retrain jobs of the cell
    eval_images: float = 0.0
    measured: dict[str, Any] = field(default_factory=dict)


def class_counts(config: dict, dataset: str, overrides: dict[str, list[int]]) -> tuple[list[int], str]:
    """Images per class of ``dataset`` and where they came from (as the workflow's dry run finds them)."""
    from backdoor_eval.data import known_class_counts

    if dataset in overrides:
        return overrides[dataset], "--class-counts"
    spec = config["datasets"][dataset]
    store = Layout(f"results/{config['name']}").store.format(dataset=dataset)
    counts = known_class_counts(store, spec["kind"], spec.get("params"))
    if counts is not None:
        return counts, "the store or its reader"
    table1 = config.get("table1") or {}
    if table1.get("dataset") == dataset and table1.get("class_counts"):
        return list(table1["class_counts"]), "table1.class_counts"
    raise ValueError(
        f"the class counts of dataset {dataset!r} are not known before its ingest; give them with "
        f"--class-counts {dataset}=N,N,... (one per class) or ingest it first"
    )


def image_size(config: dict, dataset: str, overrides: dict[str, int]) -> int:
    if dataset in overrides:
        return overrides[dataset]
    spec = config["datasets"][dataset]
    size = (spec.get("params") or {}).get("size")
    if size is None:
        size = _FIXED_IMAGE_SIZE.get(spec["kind"])
    if size is None:
        raise ValueError(f"the image size of dataset {dataset!r} is not in its params; give --image-size {dataset}=N")
    return int(size)


def expected_poison_epochs(arch: str, train: Any, mode: str, fixed: float | None) -> tuple[float, str]:
    """Training epochs the poison phase is expected to run, and how that was decided."""
    if fixed is not None:
        return min(float(fixed), train.max_epochs), "--poison-epochs"
    if mode == "paper" and arch in PAPER_BEST_EPOCH:
        return min(PAPER_BEST_EPOCH[arch] + train.patience, train.max_epochs), "paper"
    return float(train.max_epochs), "max_epochs"


def grid(
    config: dict,
    epochs_mode: str = "paper",
    poison_epochs: float | None = None,
    counts_override: dict[str, list[int]] | None = None,
    size_override: dict[str, int] | None = None,
) -> list[Cell]:
    """The grid's cells: runs and retrain jobs per (dataset, model), epochs and images (no measurement)."""
    from backdoor_eval.splits import partition_counts
    from backdoor_eval.train import TrainConfig

    expanded = ex.expand(config)
    runs = ex.union(expanded)
    retrain = set(ex.retrain_runs(config, expanded))
    by_cell: dict[tuple[str, str], list] = defaultdict(list)
    for run in runs:
        by_cell[(run.dataset, run.model)].append(run)
    cells = []
    for (dataset, model), cell_runs in by_cell.items():
        counts, _ = class_counts(config, dataset, counts_override or {})
        parts = {name: [int(v) for v in values] for name, values in partition_counts(counts).items()}
        classes = cv.dataset_classes(config, dataset)
        train = TrainConfig.from_dict(cv.train_params(config, dataset, model))
        arch, _ = cv.model_spec(config, model)
        epochs, source = expected_poison_epochs(arch, train, epochs_mode, poison_epochs)
        base_eval = sum(parts["poison_val"]) + sum(parts["clean_val"])
        adv_total = sum(parts["adv_test"])
        # evaluated each epoch: poison-val, clean-val, and the non-poison-class adversarial test twice
        eval_of = {name: base_eval + 2 * (adv_total - parts["adv_test"][i]) for i, name in enumerate(classes)}
        eval_runs = [eval_of[run.poison_class] for run in cell_runs]
        cell = Cell(
            dataset=dataset,
            model=model,
            arch=arch,
            runs=len(cell_runs),
            retrain_jobs=sum(run in retrain for run in cell_runs),
            image_size=image_size(config, dataset, size_override or {}),
            input_size=train.input_size,
            batch_size=train.batch_size,
            eval_batch_size=train.eval_batch_size,
            poison_epochs=epochs,
            poison_epochs_source=source,
            retrain_epochs=train.retrain_epochs,
            poison_train=sum(parts["poison_train"]),
            clean_train=sum(parts["clean_train"]),
            eval_per_epoch=sum(eval_runs) / len(cell_runs),
        )
        for run, evaluated in zip(cell_runs, eval_runs):
            cell.train_images += cell.poison_train * epochs
            cell.eval_images += evaluated * (epochs + 1)
            if run in retrain:
                cell.train_images += cell.clean_train * train.retrain_epochs
                cell.eval_images += evaluated * (train.retrain_epochs + 1)
        cells.append(cell)
    return cells


# ------------------------------------------------------------------------------ measurement


def _engine(cell: Cell, config: dict, device):
    import torch

    from backdoor_eval import train as engine
    from backdoor_eval.models import create_model
    from backdoor_eval.regularizers import create_regularizer

    cfg = engine.TrainConfig.from_dict(cv.train_params(config, cell.dataset, cell.model))
    engine.set_determinism(cfg, device)
    _, params = cv.model_spec(config, cell.model)
    params = {k: v for k, v in params.items() if k not in ("pretrained", "weights")}
    num_classes = len(cv.dataset_classes(config, cell.dataset))
    torch.manual_seed(0)
    model = create_model(cell.arch, num_classes=num_classes, pretrained=False, **params)
    runner = engine.Engine(model, create_regularizer("none"), cfg, num_classes, device, seed=0)
    optimizer = engine.OPTIMIZERS.get(cfg.optimizer)(runner.model.parameters(), cfg, cfg.lr)
    return runner, optimizer, num_classes


def _images(count: int, size: int, num_classes: int, device):
    import torch

    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (count, size, size, 3), dtype=torch.uint8, generator=generator).to(device)
    labels = torch.randint(0, num_classes, (count,), generator=generator).to(device)
    return images, labels


def measure(cell: Cell, config: dict, device, train_images: int, eval_images: int) -> dict[str, Any]:
    """Seconds per image of a training step and of evaluation, through the engine, after a warm-up step.

    On a GPU, wall seconds (synchronised). On a CPU, the process's CPU seconds (core-seconds with
    ``--threads``): on cores shared with other work, wall time measures the load, CPU time the work.
    """
    import torch

    runner, optimizer, num_classes = _engine(cell, config, device)
    images, labels = _images(max(train_images, eval_images, 2), cell.image_size, num_classes, device)
    on_gpu = device.type == "cuda"
    clock = time.perf_counter if on_gpu else time.process_time
    sync = torch.cuda.synchronize if on_gpu else (lambda: None)
    generator = torch.Generator().manual_seed(0)
    warm = min(len(labels), max(2, min(cell.batch_size, train_images)))
    runner.train_epoch(optimizer, images[:warm], labels[:warm], generator)  # warm-up: allocations, kernel choice
    runner.predict(images[: min(eval_images, cell.eval_batch_size)])
    sync()
    timed = {}
    for name, count, step in (
        (
            "train",
            train_images,
            lambda: runner.train_epoch(optimizer, images[:train_images], labels[:train_images], generator),
        ),
        ("eval", eval_images, lambda: runner.predict(images[:eval_images])),
    ):
        wall, tic = time.perf_counter(), clock()
        step()
        sync()
        timed[f"{name}_s_per_image"] = (clock() - tic) / count
        timed[f"{name}_wall_s_per_image"] = (time.perf_counter() - wall) / count
        timed[f"{name}_images"] = count
    timed["clock"] = "wall (synchronised)" if on_gpu else f"process CPU time, {torch.get_num_threads()} thread(s)"
    return timed


def measure_flops(cell: Cell, config: dict) -> dict[str, float]:
    """FLOPs per image of evaluation (FlopCounterMode over ``Engine.predict``, on the CPU, 2 images) and of a
    training step, taken as 3 x the forward (backward: grad-input and grad-weight, each about a forward).

    Not counted over ``train_epoch`` itself: torch's counter (2.14) gives a grouped convolution's
    grad-weight the FLOPs of a dense one, ~3.5 x too many for the NASNets' depthwise-separable cells
    (ResNet-50 counts 2.97 x its forward either way).
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    device = torch.device("cpu")
    runner, _, num_classes = _engine(cell, config, device)
    images, _ = _images(2, cell.image_size, num_classes, device)
    with FlopCounterMode(display=False) as counter:
        runner.predict(images)
    forward = counter.get_total_flops() / 2
    return {"train_flops_per_image": 3 * forward, "eval_flops_per_image": forward}


def device_label(device) -> str:
    import platform

    import torch

    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA)"
    return f"CPU ({platform.machine()}, {torch.get_num_threads()} torch threads, {os.cpu_count()} cores)"


# ------------------------------------------------------------------------------------ output


def _key_value_list(items: list[str], what: str, convert) -> dict:
    parsed = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise SystemExit(f"grid_cost.py: {what} {item!r} is not NAME=VALUE")
        parsed[name] = convert(value)
    return parsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, type=Path, help="a workflow config, e.g. config/config.yaml")
    parser.add_argument("--models", nargs="+", help="measure only these config models (the others: not measured)")
    parser.add_argument("--epochs", choices=("paper", "max"), default="paper", help="poison-phase epochs (see above)")
    parser.add_argument("--poison-epochs", type=float, help="poison-phase training epochs of every run")
    parser.add_argument(
        "--images", type=int, help="images timed per model, training and evaluation (default 2 batches)"
    )
    parser.add_argument("--quick", action="store_true", help="time 4 images per model (a rough figure, seconds)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: core-seconds)")
    parser.add_argument("--class-counts", nargs="+", default=[], metavar="DATASET=N,N,...")
    parser.add_argument("--image-size", nargs="+", default=[], metavar="DATASET=N")
    parser.add_argument("--flops-gpu", choices=sorted(GPU_PEAK_TFLOPS), help="add a FLOP-based estimate for this GPU")
    parser.add_argument("--tflops", type=float, help="the GPU's peak TFLOP/s (default: its dense bf16 peak)")
    parser.add_argument("--utilisation", type=float, nargs="+", default=[1.0, 0.4, 0.3], help="of the peak")
    parser.add_argument("--no-measure", action="store_true", help="counts only: no timing")
    parser.add_argument("--json", type=Path, help="write every figure to this JSON file")
    args = parser.parse_args(argv)

    import torch

    from backdoor_eval.train import pick_device

    torch.set_num_threads(args.threads)
    config = load_config(args.config, check_registries=False)
    counts_override = _key_value_list(args.class_counts, "--class-counts", lambda v: [int(x) for x in v.split(",")])
    size_override = _key_value_list(args.image_size, "--image-size", int)
    cells = grid(config, args.epochs, args.poison_epochs, counts_override, size_override)
    unknown = sorted(set(args.models or []) - {cell.model for cell in cells})
    if unknown:
        raise SystemExit(
            f"grid_cost.py: --models {unknown} are not in the grid; allowed: {sorted({c.model for c in cells})}"
        )
    device = pick_device(args.device)
    summary = ex.counts(config)
    print(
        f"config {args.config} ({config['name']}): {summary['distinct_runs']} training runs, {summary['retrain_jobs']} retrain jobs"
    )
    print(f"device: {device_label(device)}")

    timings: dict[tuple, dict] = {}
    flops: dict[tuple, dict] = {}
    for cell in cells:
        selected = args.models is None or cell.model in args.models
        key = (
            cell.arch,
            json.dumps(cv.model_spec(config, cell.model)[1], sort_keys=True),
            cell.image_size,
            cell.input_size,
        )
        if selected and not args.no_measure:
            count = args.images or (min(cell.batch_size, 8) if args.quick else cell.batch_size)
            if key not in timings:
                tic = time.perf_counter()
                timings[key] = measure(cell, config, device, count, count)
                print(
                    f"  timed {cell.model} at {cell.image_size} px (input {cell.input_size or 'native'}): "
                    f"{count} images, {time.perf_counter() - tic:.1f} s",
                    file=sys.stderr,
                )
            cell.measured.update(timings[key])
        if selected and args.flops_gpu:
            if key not in flops:
                flops[key] = measure_flops(cell, config)
            cell.measured.update(flops[key])

    peak = args.tflops or (GPU_PEAK_TFLOPS[args.flops_gpu] if args.flops_gpu else None)
    header = (
        f"{'dataset':<10} {'model':<14} {'runs':>5} {'retrain':>7} {'px':>9} {'epochs':>13} "
        f"{'train img/ep':>12} {'eval img/ep':>11} {'train s/img':>11} {'eval s/img':>10} {'hours':>8}"
    )
    print(header)
    total_hours, missing, flops_total = 0.0, [], 0.0
    rows = []
    for cell in cells:
        px = (
            f"{cell.image_size}>{cell.input_size}"
            if cell.input_size and cell.input_size != cell.image_size
            else str(cell.image_size)
        )
        epochs = f"{cell.poison_epochs:g}+{cell.retrain_epochs} {cell.poison_epochs_source[:5]}"
        row = {**asdict(cell), "hours": None}
        if "train_s_per_image" in cell.measured:
            hours = (
                cell.train_images * cell.measured["train_s_per_image"]
                + cell.eval_images * cell.measured["eval_s_per_image"]
            ) / 3600
            row["hours"] = hours
            total_hours += hours
            times = (
                f"{cell.measured['train_s_per_image']:>11.2e} {cell.measured['eval_s_per_image']:>10.2e} {hours:>8.2f}"
            )
        else:
            missing.append(f"{cell.dataset}/{cell.model}")
            times = f"{'not measured':>23} {'-':>8}"
        if "train_flops_per_image" in cell.measured:
            row["flops"] = (
                cell.train_images * cell.measured["train_flops_per_image"]
                + cell.eval_images * cell.measured["eval_flops_per_image"]
            )
            flops_total += row["flops"]
        rows.append(row)
        print(
            f"{cell.dataset:<10} {cell.model:<14} {cell.runs:>5} {cell.retrain_jobs:>7} {px:>9} {epochs:>13} "
            f"{cell.poison_train:>12} {cell.eval_per_epoch:>11.0f} {times}"
        )
    print(f"{'total':<10} {'':<14} {sum(c.runs for c in cells):>5} {sum(c.retrain_jobs for c in cells):>7}")
    what = "GPU" if device.type == "cuda" else "CPU"
    clock = "wall time" if device.type == "cuda" else f"process CPU time at {args.threads} thread(s): core-hours"
    print(
        f"\n{what} estimate on this device: {total_hours:.3g} device-hours ({clock}), from measured seconds per image"
    )
    if missing:
        print(f"not measured, not in the total: {', '.join(missing)}")
    result: dict[str, Any] = {
        "config": str(args.config),
        "device": device_label(device),
        "cells": rows,
        "runs": summary["distinct_runs"],
        "retrain_jobs": summary["retrain_jobs"],
        "device_hours": total_hours,
        "not_measured": missing,
    }
    if args.flops_gpu:
        print(
            f"\nFLOP-based estimate for one {args.flops_gpu.upper()} at {peak:g} TFLOP/s peak (dense bf16): "
            f"{flops_total / 1e15:.4g} PFLOP in all"
        )
        result["flops"] = flops_total
        result["gpu_hours"] = {}
        for share in args.utilisation:
            hours = flops_total / (peak * 1e12 * share) / 3600
            result["gpu_hours"][str(share)] = hours
            print(f"  at {share:.0%} of peak: {hours:.3g} GPU-hours")
        for row in rows:
            if row.get("flops"):
                print(f"  {row['dataset']}/{row['model']}: {row['flops'] / flops_total:.0%} of the FLOPs")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

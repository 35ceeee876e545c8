"""A learning rate per optimizer, by measurement: a few epochs per (optimizer, learning rate) candidate.

    .venv/bin/python benchmarks/optimizer_lr.py --zip resources/datasets/cifar10-jpeg.zip --out /tmp/optimizer-lr

What config/real-cifar10-optimizer.yaml's learning rates come from: the
small CNN (width 16) on the CIFAR-10 test half of an image-folder zip,
split seed0, BS at poison rate 0.1 on truck, ``--epochs`` epochs per
candidate (no early stop), two candidates at a time on one core each. It
runs the package's own commands (ingest, partition, poison, train) and
prints, per candidate, the last epoch's training loss, poison-validation
and clean-validation accuracy. Finished candidates are kept in ``--out``
and not run again.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd

# (name, training settings) of each candidate; the learning rates around each optimizer's usual range.
CANDIDATES = {
    "adam_3e-3": {"optimizer": "adam", "lr": 3e-3},
    "sgd_1e-2": {"optimizer": "sgd", "lr": 1e-2, "momentum": 0.9},
    "sgd_3e-2": {"optimizer": "sgd", "lr": 3e-2, "momentum": 0.9},
    "sgd_1e-1": {"optimizer": "sgd", "lr": 1e-1, "momentum": 0.9},
    "adamw_1e-3": {"optimizer": "adamw", "lr": 1e-3, "weight_decay": 0.01},
    "adamw_3e-3": {"optimizer": "adamw", "lr": 3e-3, "weight_decay": 0.01},
}


def cli(*args: str, log: Path | None = None) -> None:
    command = [sys.executable, "-m", "backdoor_eval.cli", *args]
    with open(log, "w") if log else open("/dev/null", "w") as handle:
        subprocess.run(command, check=True, stdout=handle, stderr=subprocess.STDOUT)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zip", required=True, help="image-folder zip of CIFAR-10 (<root>/{train,test}/<class>/...)")
    parser.add_argument("--out", required=True, type=Path, help="working folder (store, runs)")
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    if not (out / "store").exists():
        params = {"path": args.zip, "splits": ["test"], "size": None}
        cli("ingest", "--dataset", "imagefolder", "--params", json.dumps(params), "--out", str(out / "store"))
    if not (out / "partitions.npz").exists():
        cli("partition", "--store", str(out / "store"), "--split", "seed0", "--out", str(out / "partitions.npz"))
    if not (out / "poisoned").exists():
        cli(
            *("poison", "--store", str(out / "store"), "--partitions", str(out / "partitions.npz")),
            *("--trigger", "bs", "--alpha", "1.0", "--poison-class", "truck", "--poison-rate", "0.1"),
            *("--strategy", "many-to-one", "--split", "seed0", "--out", str(out / "poisoned")),
        )
    common = {"batch_size": 64, "eval_batch_size": 500, "max_epochs": args.epochs, "patience": args.epochs}

    def train(name: str) -> None:
        run = out / name
        if (run / "final.json").exists():
            return
        run.mkdir(exist_ok=True)
        settings = {**CANDIDATES[name], **common, "retrain_epochs": 0}
        cli(
            *("train", "--store", str(out / "store"), "--partitions", str(out / "partitions.npz")),
            *("--poisoned", str(out / "poisoned"), "--model", "small_cnn"),
            *("--model-params", json.dumps({"width": 16, "pretrained": False, "weights": None})),
            *("--train-params", json.dumps(settings), "--device", "cpu", "--seed", "0", "--threads", "1"),
            *("--checkpoint", str(run / "ckpt.pt"), "--out-model", str(run / "model.pt")),
            *("--out-epochs", str(run / "epochs.parquet"), "--out-final", str(run / "final.json")),
            log=run / "log.txt",
        )

    with ThreadPoolExecutor(2) as pool:
        list(pool.map(train, CANDIDATES))
    print(f"{'candidate':<12} {'train loss':>10} {'poison-val':>11} {'clean-val':>10}   (epoch {args.epochs})")
    for name in CANDIDATES:
        last = pd.read_parquet(out / name / "epochs.parquet").iloc[-1]
        print(
            f"{name:<12} {last['train_loss']:>10.3f} {last['poison_val_accuracy']:>11.3f} {last['clean_val_accuracy']:>10.3f}"
        )


if __name__ == "__main__":
    main()

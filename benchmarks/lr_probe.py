"""The learning-rate measurement of a config's probe experiment, and the rate it chooses.

    .venv/bin/python benchmarks/lr_probe.py --config config/real-cifar10-pretrained.yaml --targets
    .venv/bin/python benchmarks/lr_probe.py --config config/real-cifar10-pretrained.yaml

The probe experiment (``L`` by default) trains the same run at several learning rates, each a model
entry whose ``train.lr`` overrides the config's. ``--targets`` prints the files that make its runs (for
``snakemake <targets>``: the probe first, before the grid that uses its answer). Without it, the
script reads the finished probe from ``results/<name>/runs/<run>/summary.parquet`` and prints, per
model, the rate, the kept poison-phase epoch, its ASR and accuracies, and the ASR after the clean
retraining; then the chosen rate: the lowest rate of an ``--init`` model (the pretrained ones by
default) whose poison-phase ASR reaches ``--min-asr`` (the backdoor is learned within the epoch cap),
else the rate with the highest ASR. ``--write`` puts it in the config's ``train.lr`` line.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import pandas as pd

from backdoor_eval import configview as cv
from backdoor_eval import experiments as ex
from backdoor_eval import pretrain
from backdoor_eval.config import load_config
from backdoor_eval.layout import Layout
from backdoor_eval.names import CLEAN_PHASE, POISON_PHASE


def probe_runs(config: dict, experiment: str) -> list[ex.Run]:
    runs = ex.expand(config).get(experiment)
    if not runs:
        raise SystemExit(
            f"experiment {experiment!r} is not in the config; experiments: {', '.join(config['experiments'])}"
        )
    return runs


def measurement(config: dict, runs: list[ex.Run], layout: Layout) -> pd.DataFrame:
    rows = []
    for run in runs:
        path = Path(layout.run_summary(run.run_id))
        if not path.is_file():
            raise SystemExit(f"{path} does not exist: run the probe first (--targets)")
        summary = pd.read_parquet(path).set_index("phase")
        poison = summary.loc[POISON_PHASE]
        rows.append(
            {
                "model": run.model,
                "init": pretrain.model_init(config, run.model) or "scratch",
                "lr": float(cv.train_params(config, run.dataset, run.model)["lr"]),
                "best_epoch": int(poison["best_epoch"]),
                "poison_val_accuracy": poison["poison_val_accuracy"],
                "clean_val_accuracy": poison["clean_val_accuracy"],
                "asr": poison["adversarial_success_rate"],
                "asr_retrained": summary.loc[CLEAN_PHASE, "adversarial_success_rate"]
                if CLEAN_PHASE in summary.index
                else float("nan"),
            }
        )
    return pd.DataFrame(rows).sort_values(["init", "lr"]).reset_index(drop=True)


def choose(table: pd.DataFrame, min_asr: float, init: str | None) -> float:
    candidates = table[table["init"] != "scratch"] if init is None else table[table["init"] == init]
    if candidates.empty:
        raise SystemExit(f"no probe run of init {init or 'pretrained'!r}; inits: {', '.join(table['init'].unique())}")
    learned = candidates[candidates["asr"] >= min_asr]
    best = learned.nsmallest(1, "lr") if not learned.empty else candidates.nlargest(1, "asr")
    return float(best["lr"].iloc[0])


def yaml_number(lr: float) -> str:
    """``3.0e-4``: a float to YAML (which needs the point), without the exponent's leading zero."""
    return f"{lr:.1e}".replace("e-0", "e-")


def write_lr(config_file: Path, lr: float) -> None:
    text = config_file.read_text()
    new, count = re.subn(r"(?m)^(train:\n(?:  .*\n)*?  lr: ).*$", lambda m: f"{m.group(1)}{yaml_number(lr)}", text)
    if count != 1:
        raise SystemExit(f"{config_file}: no `train:` block with an `lr:` line to write")
    config_file.write_text(new)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, type=Path)
    parser.add_argument("--experiment", default="L")
    parser.add_argument("--targets", action="store_true", help="print the probe's target files and stop")
    parser.add_argument("--min-asr", type=float, default=0.5, help="ASR at which the backdoor counts as learned")
    parser.add_argument("--init", help="the pretraining whose models choose the rate (default: any pretrained)")
    parser.add_argument("--write", action="store_true", help="write the chosen rate into the config's train.lr")
    args = parser.parse_args()
    config = load_config(args.config, check_registries=False)
    layout = Layout(f"results/{config['name']}")
    runs = probe_runs(config, args.experiment)
    if args.targets:
        print(" ".join(layout.run_summary(run.run_id) for run in runs))
        return 0
    table = measurement(config, runs, layout)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    lr = choose(table, args.min_asr, args.init)
    print(f"chosen learning rate: {lr:g} (lowest pretrained rate with ASR >= {args.min_asr}, else the highest ASR)")
    if args.write:
        write_lr(args.config, lr)
        print(f"wrote train.lr: {yaml_number(lr)} into {args.config}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

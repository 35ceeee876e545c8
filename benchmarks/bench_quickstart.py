"""Time the embedded quickstart end to end and check what it must show.

    .venv/bin/python benchmarks/bench_quickstart.py            # fresh clone of HEAD in a temp dir
    .venv/bin/python benchmarks/bench_quickstart.py --cores 2

It clones the repository's committed HEAD into a temporary folder (so nothing
in the working tree's results/ is reused), runs the quickstart workflow there
with this interpreter's Snakemake (the venv is reused: creating it is a
one-off ~2 min install, reported separately by `make`), and prints the wall
time, the job count, and the BS backdoor check of issue 4: ASR before
retraining clearly above the clean rate of predicting the poison class, and
lower after clean retraining.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cores", type=int, default=2)
    args = parser.parse_args()
    snakemake = Path(sys.executable).with_name("snakemake")
    with tempfile.TemporaryDirectory(prefix="bench-quickstart-") as tmp:
        clone = Path(tmp) / "backdoor-eval"
        subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
        tic = time.perf_counter()
        proc = subprocess.run(
            [str(snakemake), "--cores", str(args.cores), "--configfile", "config/quickstart.yaml", "--quiet", "all"],
            cwd=clone,
            capture_output=True,
            text=True,
        )
        seconds = time.perf_counter() - tic
        if proc.returncode != 0:
            print(proc.stdout[-4000:], proc.stderr[-4000:], sep="\n")
            return 1
        results = clone / "results" / "quickstart"
        outputs = sorted(p.name for p in (results / "tables").iterdir()) + sorted(
            p.name for p in (results / "figures").iterdir()
        )
        runs = pd.read_parquet(results / "runs.parquet")
        print(
            f"quickstart on {args.cores} cores: {seconds:.0f} s ({seconds / 60:.1f} min), "
            f"{runs.run_id.nunique()} distinct runs; outputs: {', '.join(outputs)}"
        )
        bs = runs[runs.experiment.isin(["E1", "E2"]) & (runs.trigger == "bs")]
        table = bs.pivot_table(
            index="poison_class",
            columns="phase",
            values=["adversarial_success_rate", "poison_class_rate_clean"],
        )
        print("BS backdoor (E1 = poison phase, E2 = after clean retraining):")
        print(table.round(3).to_string())
        poisoned = bs[bs.phase == "poison"]
        retrained = bs[bs.phase == "clean"]
        margin = (poisoned.adversarial_success_rate - poisoned.poison_class_rate_clean).mean()
        drop = poisoned.adversarial_success_rate.mean() - retrained.adversarial_success_rate.mean()
        print(f"ASR minus clean poison-class rate (poisoned): {margin:+.3f}; ASR drop after retraining: {drop:+.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

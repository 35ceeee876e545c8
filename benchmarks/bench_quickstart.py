"""Time the embedded quickstart end to end and check what it must show.

    .venv/bin/python benchmarks/bench_quickstart.py            # fresh clone of HEAD in a temp dir
    .venv/bin/python benchmarks/bench_quickstart.py --cores 2 --rev main   # another commit, e.g. the one before a change

It clones the repository's committed HEAD (or ``--rev``) into a temporary folder (so
nothing in the working tree's results/ is reused), runs the quickstart workflow there
with this interpreter's Snakemake and the clone's own sources first on ``PYTHONPATH``
(the venv is reused, whichever checkout it was installed from: creating it is a
one-off ~2 min install, reported separately by `make`), and prints:

- the wall time, the load average before and after (other work on the same cores
  slows it: say so when quoting it), and the CPU time of Snakemake and all its jobs;
- the CPU time of the jobs (their Snakemake benchmark files) per rule, and Snakemake's
  own share (the rest);
- for the train and retrain jobs, the mean time outside their epochs (process start,
  imports, data loading, writing the outputs: what a job costs beyond its training);
- the BS backdoor check of issue 4: ASR before retraining clearly above the clean rate
  of predicting the poison class, and lower after clean retraining.

Run two commits side by side (two shells, the same ``--cores``) to compare them under
the same load.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from job_times import job_table  # noqa: E402  (a sibling script)


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def outside_epochs(results: Path) -> pd.DataFrame:
    """Per train/retrain job: its wall seconds (benchmark file) and the seconds of its epochs (epochs.parquet)."""
    rows = []
    for rule, phase in (("train", "poison"), ("retrain", "clean")):
        for bench in sorted((results / "benchmarks" / rule).rglob("*.tsv")):
            run_id = bench.relative_to(results / "benchmarks" / rule).with_suffix("").as_posix()
            phase_dir = results / "runs" / run_id / phase
            epochs = pd.read_parquet(phase_dir / "epochs.parquet")
            final = json.loads((phase_dir / "final.json").read_text())
            wall = float(pd.read_csv(bench, sep="\t").iloc[-1]["s"])
            rows.append(
                {
                    "rule": rule,
                    "wall_s": wall,
                    "in_process_s": final["seconds_total"],
                    "epochs_s": float(epochs["seconds"].sum()),
                }
            )
    frame = pd.DataFrame(rows)
    frame["outside_epochs_s"] = frame["wall_s"] - frame["epochs_s"]
    frame["start_up_s"] = frame["wall_s"] - frame["in_process_s"]
    return frame


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--rev", default="HEAD", help="the commit to clone and run (default: HEAD)")
    parser.add_argument(
        "--keep", type=Path, help="copy the results folder here (tables, runs.parquet) for a closer look"
    )
    args = parser.parse_args()
    snakemake = Path(sys.executable).with_name("snakemake")
    rev = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--verify", args.rev], capture_output=True, text=True, check=True
    ).stdout.strip()
    with tempfile.TemporaryDirectory(prefix="bench-quickstart-") as tmp:
        clone = Path(tmp) / "backdoor-eval"
        subprocess.run(["git", "clone", "-q", "--no-checkout", str(REPO), str(clone)], check=True)
        subprocess.run(["git", "-C", str(clone), "checkout", "-q", rev], check=True)
        env = dict(
            os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(clone / "src"), os.environ.get("PYTHONPATH")]))
        )
        load_before = os.getloadavg()
        cpu_before = children_cpu_seconds()
        tic = time.perf_counter()
        proc = subprocess.run(
            [str(snakemake), "--cores", str(args.cores), "--configfile", "config/quickstart.yaml", "--quiet", "all"],
            cwd=clone,
            env=env,
            capture_output=True,
            text=True,
        )
        seconds = time.perf_counter() - tic
        cpu = children_cpu_seconds() - cpu_before
        load_after = os.getloadavg()
        if proc.returncode != 0:
            print(proc.stdout[-4000:], proc.stderr[-4000:], sep="\n")
            return 1
        results = clone / "results" / "quickstart"
        outputs = sorted(p.name for p in (results / "tables").iterdir()) + sorted(
            p.name for p in (results / "figures").iterdir()
        )
        runs = pd.read_parquet(results / "runs.parquet")
        jobs = job_table(results)
        print(
            f"quickstart at {rev[:10]} on {args.cores} cores ({os.cpu_count()} on the machine): "
            f"{seconds:.0f} s ({seconds / 60:.1f} min); load average {load_before[0]:.1f} before, "
            f"{load_after[0]:.1f} after (1 min), {load_after[2]:.1f} (15 min)"
        )
        print(
            f"{len(jobs)} jobs, {runs.run_id.nunique()} distinct runs; CPU time {cpu:.0f} s in all, "
            f"{jobs['cpu'].sum():.0f} s in the jobs, {cpu - jobs['cpu'].sum():.0f} s in Snakemake itself"
        )
        print(f"outputs: {', '.join(outputs)}")
        per_rule = jobs.groupby("rule").agg(jobs=("seconds", "size"), wall_s=("seconds", "sum"), cpu_s=("cpu", "sum"))
        print(per_rule.sort_values("cpu_s", ascending=False).round(0).to_string())
        phases = outside_epochs(results)
        print("train/retrain jobs, mean seconds (wall, inside the process, epochs, outside the epochs, start-up):")
        print(phases.groupby("rule").mean().round(2).to_string())
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
        if args.keep is not None:
            subprocess.run(["cp", "-r", str(results), str(args.keep)], check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Where a finished config's time went, from the workflow's own per-job benchmark files.

    .venv/bin/python benchmarks/job_times.py results/real-cifar10

Every rule writes a Snakemake `benchmark:` file per job (wall seconds, CPU
seconds, peak memory). This sums them per rule and prints the number of jobs,
their total and longest wall time, their CPU time and peak resident memory, and
the total: the compute a config costs, whatever the number of cores or
interruptions (a job that was killed and resumed counts its last attempt only).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd


def job_table(results: Path) -> pd.DataFrame:
    """One row per job: rule, wall seconds, CPU seconds, peak RSS (MB)."""
    rows = []
    for path in sorted((results / "benchmarks").rglob("*.tsv")):
        rule = path.relative_to(results / "benchmarks").parts[0]
        frame = pd.read_csv(path, sep="\t")
        if frame.empty:
            continue
        last = frame.iloc[-1]
        rows.append({"rule": rule, "seconds": float(last["s"]), "cpu": float(last["cpu_time"]), "rss": last["max_rss"]})
    return pd.DataFrame(rows, columns=["rule", "seconds", "cpu", "rss"])


def summary(jobs: pd.DataFrame) -> pd.DataFrame:
    """Per rule: jobs, total and longest wall seconds, CPU seconds, peak RSS; and a total row."""
    rss = pd.to_numeric(jobs["rss"], errors="coerce")
    table = (
        jobs.assign(rss=rss)
        .groupby("rule")
        .agg(
            jobs=("seconds", "size"),
            wall_s=("seconds", "sum"),
            longest_s=("seconds", "max"),
            cpu_s=("cpu", "sum"),
            peak_rss_mb=("rss", "max"),
        )
        .sort_values("wall_s", ascending=False)
    )
    total = pd.DataFrame(
        {
            "jobs": [len(jobs)],
            "wall_s": [jobs["seconds"].sum()],
            "longest_s": [jobs["seconds"].max()],
            "cpu_s": [jobs["cpu"].sum()],
            "peak_rss_mb": [rss.max()],
        },
        index=["total"],
    )
    return pd.concat([table, total])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, help="a config's results folder, e.g. results/real-cifar10")
    args = parser.parse_args()
    if not (args.results / "benchmarks").is_dir():
        print(f"{args.results}: no benchmarks/ folder; expected a results folder the workflow wrote", file=sys.stderr)
        return 2
    jobs = job_table(args.results)
    table = summary(jobs)
    print(table.round({"wall_s": 0, "longest_s": 0, "cpu_s": 0, "peak_rss_mb": 0}).to_string())
    print(
        f"\njob wall time in all: {jobs['seconds'].sum() / 3600:.2f} h "
        f"(divide by the number of jobs run at once for the elapsed time)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

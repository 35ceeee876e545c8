"""Dry-run time of the workflow on the paper grid and on a grid with 10x the seeds.

    .venv/bin/python benchmarks/bench_dryrun.py [--repeat 1]

Prints, per grid, the job counts and the wall-clock and CPU seconds of
`snakemake -n --quiet rules` (parse + DAG + dry-run listing), run in a
temporary working directory so nothing is written to the checkout. CPU
seconds are the steadier figure on a shared machine.
Target: < 15 s for the paper grid on 2 cores.
"""

from __future__ import annotations

import argparse
import copy
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from backdoor_eval import experiments as ex

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def seeds_times(config: dict, factor: int) -> dict:
    """The config with every experiment's seed list ``factor`` times as long."""
    config = copy.deepcopy(config)
    for spec in config["experiments"].values():
        seeds = spec.get("seed", 0)
        if isinstance(seeds, dict):
            count = seeds["range"] if isinstance(seeds["range"], int) else seeds["range"][1] - seeds["range"][0]
        else:
            count = len(seeds) if isinstance(seeds, list) else 1
        spec["seed"] = {"range": count * factor}
    return config


def dry_run(config: dict, workdir: Path) -> tuple[float, float, dict[str, int]]:
    """Wall seconds, CPU seconds (user + system, robust to a busy machine) and job counts."""
    config_file = workdir / "config.yaml"
    config_file.write_text(yaml.safe_dump(config))
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    command = [str(BIN / "snakemake"), "-s", str(REPO / "Snakefile"), "-d", str(workdir)]
    command += ["--configfile", str(config_file), "-n", "--quiet", "rules"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_seconds = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if result.returncode != 0:
        sys.exit(result.stderr[-3000:])
    output = result.stdout + result.stderr
    counts = {}
    for line in output[output.index("Job stats:") :].splitlines()[3:]:
        match = re.fullmatch(r"(\w+)\s+(\d+)", line.strip())
        if not match:
            break
        counts[match.group(1)] = int(match.group(2))
    return seconds, cpu_seconds, counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=1, help="dry runs per grid (the minimum is reported)")
    args = parser.parse_args()
    paper = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    grids = {"paper": paper, "paper x10 seeds": seeds_times(paper, 10)}
    print(f"cores: {os.cpu_count()}, load average: {os.getloadavg()[0]:.2f}")
    for name, config in grids.items():
        summary = ex.counts(config)
        times, cpu_times = [], []
        for _ in range(args.repeat):
            with tempfile.TemporaryDirectory(prefix="bench-dryrun-") as workdir:
                seconds, cpu_seconds, counts = dry_run(config, Path(workdir))
            times.append(seconds)
            cpu_times.append(cpu_seconds)
        jobs = ", ".join(f"{rule} {count}" for rule, count in counts.items() if rule != "total")
        print(
            f"{name}: {min(times):.1f} s dry run ({min(cpu_times):.1f} s CPU), {counts['total']} jobs "
            f"({summary['distinct_runs']} distinct runs, {summary['retrain_jobs']} retrain)\n  {jobs}"
        )


if __name__ == "__main__":
    main()

"""Snakemake's main process with and without the scheduler work-around (backdoor_eval.scheduling).

    .venv/bin/python benchmarks/bench_scheduler.py                 # 300 jobs of 0.3 s, 2 cores
    .venv/bin/python benchmarks/bench_scheduler.py --jobs 600 --seconds 0.5

It writes a workflow of independent ``sleep`` jobs in a temporary folder and runs it twice with this
interpreter's Snakemake, in one process each: once as Snakemake ships, once with
``limit_reevaluation_timers()`` applied (as the project's Snakefile does). For each it prints the wall
time, the CPU time of the Snakemake process itself (its jobs are child processes and not counted), and
the most threads it held; then the ratios. The jobs do nothing but wait, so the CPU time is the
scheduler's own cost, and it grows with the number of jobs finished when the timers pile up.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

SNAKEFILE = """
import os
if os.environ.get("BENCH_PATCH") == "1":
    from backdoor_eval.scheduling import limit_reevaluation_timers
    limit_reevaluation_timers()

rule all:
    input: expand("out/{{i}}.txt", i=range({jobs}))

rule wait:
    output: "out/{{i}}.txt"
    shell: "sleep {seconds} && touch {{output}}"
"""

# Runs Snakemake in this process, samples its thread count, and reports its own CPU time at exit.
RUNNER = textwrap.dedent(
    """
    import json, resource, sys, threading, time
    from snakemake.cli import main
    peak = [threading.active_count()]
    def sample():
        while True:
            peak[0] = max(peak[0], threading.active_count())
            time.sleep(0.2)
    threading.Thread(target=sample, daemon=True).start()
    start = time.monotonic()
    code = 0
    try:
        main(sys.argv[2:])
    except SystemExit as exc:
        code = exc.code or 0
    usage = resource.getrusage(resource.RUSAGE_SELF)
    with open(sys.argv[1], "w") as out:
        json.dump({"wall": time.monotonic() - start, "cpu": usage.ru_utime + usage.ru_stime,
                   "threads": peak[0], "code": code}, out)
    """
)


def run(folder: Path, patched: bool, cores: int) -> dict:
    result = folder / ("patched.json" if patched else "shipped.json")
    work = folder / ("patched" if patched else "shipped")
    work.mkdir()
    env = {**__import__("os").environ, "BENCH_PATCH": "1" if patched else "0"}
    env["PYTHONPATH"] = f"{REPO / 'src'}:{env.get('PYTHONPATH', '')}"
    command = [sys.executable, "-c", RUNNER, str(result), "--snakefile", str(folder / "Snakefile")]
    command += ["--directory", str(work), "--cores", str(cores), "--quiet", "all"]
    subprocess.run(command, check=True, env=env, cwd=folder, stdout=subprocess.DEVNULL)
    measured = json.loads(result.read_text())
    if measured["code"] != 0:
        raise SystemExit(f"the {'patched' if patched else 'shipped'} run failed (exit {measured['code']})")
    return measured


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--seconds", type=float, default=0.3, help="how long each job sleeps")
    parser.add_argument("--cores", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-scheduler-") as tmp:
        folder = Path(tmp)
        (folder / "Snakefile").write_text(SNAKEFILE.format(jobs=args.jobs, seconds=args.seconds))
        shipped = run(folder, patched=False, cores=args.cores)
        patched = run(folder, patched=True, cores=args.cores)
    print(f"{args.jobs} jobs of sleep {args.seconds} s, --cores {args.cores}")
    for name, m in (("as shipped", shipped), ("work-around", patched)):
        print(
            f"  {name:12s} wall {m['wall']:6.1f} s   Snakemake's own CPU {m['cpu']:6.1f} s   peak threads {m['threads']}"
        )
    print(
        f"  ratios (shipped / work-around): wall {shipped['wall'] / patched['wall']:.2f}, "
        f"CPU {shipped['cpu'] / max(patched['cpu'], 1e-9):.2f}, threads {shipped['threads'] / patched['threads']:.1f}"
    )


if __name__ == "__main__":
    main()

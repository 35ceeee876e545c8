"""The GPU check's steps, each with its own time limit, into one markdown results file.

Called by ``benchmarks/gpu_check.sh`` (which sets up PYTHONPATH, the ``backdoor-eval`` and
``snakemake`` commands and the offline wheels); see docs/performance.md#gpu-check. The whole
check stays within ``--budget`` seconds (default 470, under 8 minutes with the set-up): each
step gets the smaller of its own limit and what is left, the compiled benchmark (the longest,
and the one most likely to be cut) runs last, and the results file is rewritten after every
step, so a check stopped from outside still leaves what it measured. Without a GPU the CUDA
parts skip (the tests) or say so, and the file is still written.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable

# The four paper models at their config/config.yaml sizes (bench_train.py --sizes paper).
MODELS = ["small_cnn", "resnet50", "nasnet_mobile", "nasnet_large"]
BENCH = [PYTHON, "benchmarks/bench_train.py", "--device", "cuda", "--models", *MODELS, "--sizes", "paper"]
BENCH += ["--fast", "on", "--images", "512", "--repeats", "2"]


@dataclass
class Step:
    name: str
    seconds: float = 0.0
    status: str = "not run"
    summary: list[str] = field(default_factory=list)  # lines for the file
    output: str = ""  # the command's output, its tail kept


class Check:
    def __init__(self, results: Path, work: Path, budget: float, installed: list[str]):
        self.results, self.work, self.installed = results, work, installed
        self.deadline = time.monotonic() + budget
        self.start = time.time()
        self.steps: list[Step] = []
        self.cuda = False

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def run(self, step: Step, command: list[str], limit: float, **kwargs) -> subprocess.CompletedProcess | None:
        """Run ``command`` for at most ``limit`` seconds (less if the budget is short); record it in ``step``."""
        self.steps.append(step)
        limit = min(limit, self.left() - 5)
        if limit < 10:
            step.status = "skipped: out of time"
            self.write()
            return None
        tic = time.monotonic()
        try:
            done = subprocess.run(
                command, cwd=kwargs.pop("cwd", REPO), capture_output=True, text=True, timeout=limit, **kwargs
            )
            step.output = done.stdout + done.stderr
            step.status = "ok" if done.returncode == 0 else f"failed (exit {done.returncode})"
        except subprocess.TimeoutExpired as exc:
            done = None
            step.output = _text(exc.stdout) + _text(exc.stderr)
            step.status = f"timed out after {limit:.0f} s"
        step.seconds = time.monotonic() - tic
        self.write()
        return done

    def write(self) -> None:
        lines = [
            "# GPU check results",
            "",
            f"- started {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(self.start))}, "
            f"{time.time() - self.start:.0f} s so far",
            f"- host {platform.node()}, Python {platform.python_version()}, repository {_git_head()}",
            f"- wheels installed from .whl/: {', '.join(self.installed) if self.installed else 'none'}",
            "",
            "| step | status | seconds |",
            "| --- | --- | --- |",
        ]
        lines += [f"| {s.name} | {s.status} | {s.seconds:.1f} |" for s in self.steps]
        for s in self.steps:
            lines += ["", f"## {s.name}", "", f"Status: {s.status}, {s.seconds:.1f} s.", ""]
            if s.summary:
                lines += [*s.summary, ""]
            if s.output:
                tail = s.output.strip().splitlines()[-60:]
                lines += ["<details><summary>output (last 60 lines)</summary>", "", "```", *tail, "```", "</details>"]
        self.results.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.results.with_name(self.results.name + ".tmp")
        tmp.write_text("\n".join(lines) + "\n")
        tmp.replace(self.results)


def _text(value) -> str:
    if value is None:
        return ""
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def _git_head() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
        return head.stdout.strip() or "unknown commit"
    except OSError:
        return "unknown commit (no git)"


# --------------------------------------------------------------------------- steps


def device_step(check: Check) -> None:
    step = Step("device")
    probe = (
        "import torch, torchvision, timm, platform\n"
        "print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version())\n"
        "print('torchvision', torchvision.__version__, 'timm', timm.__version__)\n"
        "print('cuda available', torch.cuda.is_available())\n"
        "if torch.cuda.is_available():\n"
        "    p = torch.cuda.get_device_properties(0)\n"
        "    print('device', p.name, f'{p.total_memory / 2**30:.0f} GiB', 'capability', f'{p.major}.{p.minor}',\n"
        "          'bf16', torch.cuda.is_bf16_supported())\n"
    )
    done = check.run(step, [PYTHON, "-c", probe], 120)
    smi = shutil.which("nvidia-smi")
    if smi:
        query = subprocess.run(
            [smi, "--query-gpu=name,memory.total,driver_version,power.limit", "--format=csv,noheader"],
            capture_output=True,
            text=True,
        )
        step.summary.append(f"nvidia-smi: {query.stdout.strip() or query.stderr.strip()}")
    else:
        step.summary.append("nvidia-smi: not found")
    if done is not None:
        step.summary += [f"- {line}" for line in done.stdout.splitlines()]
        check.cuda = "cuda available True" in done.stdout
    check.write()


def tests_step(check: Check) -> None:
    step = Step("CUDA tests (pytest -m cuda tests/test_cuda.py)")
    command = [PYTHON, "-m", "pytest", "-m", "cuda", "tests/test_cuda.py", "-q", "-s", "-p", "no:cacheprovider"]
    done = check.run(step, command, 200)
    lines = step.output.splitlines()
    step.summary += [f"- {line.strip()}" for line in lines if line.strip().startswith("[measured]")]
    results = [line for line in lines if " passed" in line or " failed" in line or " skipped" in line]
    if results:
        step.summary.append(f"- pytest: {results[-1].strip()}")
    if done is not None and not check.cuda:
        step.summary.append("- no CUDA device: the tests skip")
    check.write()


def bench_step(check: Check, compiled: bool, limit: float) -> None:
    mode = "compiled" if compiled else "eager"
    step = Step(f"training throughput, {mode} (bench_train.py)")
    if not check.cuda:
        check.steps.append(step)
        step.status = "skipped: no CUDA device"
        check.write()
        return
    rows_file = check.work / f"bench_{mode}.json"
    check.run(step, [*BENCH, "--compile", "on" if compiled else "off", "--json", str(rows_file)], limit)
    if rows_file.exists():
        rows = json.loads(rows_file.read_text())
        step.summary += [
            "| model | px | sync img/s | engine img/s | gain | bare img/s | outside fwd/bwd | warm-up s |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        step.summary += [
            f"| {r['model']} | {r['size']} | {r['sync_images_per_s']:,.0f} | {r['images_per_s']:,.0f} | "
            f"{r['gain_over_sync']:+.0%} | {r['bare_images_per_s']:,.0f} | {r['overhead_share']:.0%} | "
            f"{r['warmup_s']:.1f} |"
            for r in rows
        ]
        missing = [m for m in MODELS if m not in {r["model"] for r in rows}]
        if missing:
            step.summary.append(f"\nNot measured (time limit): {', '.join(missing)}")
    check.write()


def workflow_step(check: Check) -> None:
    """Two runs of a tiny synthetic config, trained and retrained on the GPU, with --resources gpu=1."""
    import yaml

    step = Step("workflow slice (snakemake --resources gpu=1)")
    config = copy.deepcopy(yaml.safe_load((REPO / "config" / "quickstart.yaml").read_text()))
    config.update(name="gpu-slice", device="cuda" if check.cuda else "cpu")
    config["datasets"]["synthetic"]["params"] = {"num_classes": 3, "per_class": 60, "size": 16, "seed": 0}
    config["datasets"]["synthetic"]["classes"] = ["class0", "class1", "class2"]
    config["train"].update(max_epochs=2, patience=1, retrain_epochs=1)
    config["experiments"] = {
        "E1": {
            "dataset": "synthetic",
            "model": "small_cnn",
            "trigger": ["bs", "sin"],
            "poison_class": "class0",
            "retrain": True,
        },
    }
    config["outputs"] = {"table2": "E1", "table3": "E1"}
    config["table1"] = {"dataset": "synthetic", "poison_rate": 0.1}
    config["gallery"] = {"dataset": "synthetic", "seed": 0, "image_index": 0}
    workdir = check.work / "workflow"
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "slice.yaml").write_text(yaml.safe_dump(config))
    snakemake = shutil.which("snakemake") or "snakemake"
    command = [
        snakemake,
        "-s",
        str(REPO / "Snakefile"),
        "-d",
        str(workdir),
        "--configfile",
        str(workdir / "slice.yaml"),
    ]
    check.run(step, [*command, "--cores", "4", "--resources", "gpu=1"], 240)
    results = workdir / "results" / "gpu-slice"
    runs = results / "runs.parquet"
    step.summary.append(f"- device: {config['device']}; runs.parquet {'exists' if runs.exists() else 'is MISSING'}")
    if runs.exists():
        import pandas as pd

        table = pd.read_parquet(runs)
        step.summary.append(f"- {len(table)} rows, phases {sorted(set(table['phase']))}")
        for final in sorted(results.glob("runs/**/final.json")):
            document = json.loads(final.read_text())
            step.summary.append(
                f"- {final.relative_to(results)}: device {document['device']}, gpu_slot {document['gpu_slot']}, "
                f"{document['seconds_total']:.1f} s, ASR {document['adversarial_success_rate']:.3f}"
            )
    check.write()


def grid_cost_step(check: Check) -> None:
    step = Step("grid cost (grid_cost.py --config config/config.yaml)")
    script = REPO / "benchmarks" / "grid_cost.py"
    if not script.exists():
        check.steps.append(step)
        step.status = "skipped: not present (benchmarks/grid_cost.py)"
        check.write()
        return
    check.run(step, [PYTHON, str(script), "--config", "config/config.yaml"], 150)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=Path("gpu_check_results.md"))
    parser.add_argument("--work", type=Path, required=True, help="a scratch folder")
    parser.add_argument("--installed", type=Path, help="list of the wheels gpu_check.sh installed")
    parser.add_argument("--budget", type=float, default=float(os.environ.get("GPU_CHECK_BUDGET_S", 470)))
    args = parser.parse_args()
    installed = args.installed.read_text().splitlines() if args.installed and args.installed.exists() else []
    check = Check(args.results, args.work, args.budget, installed)
    check.write()
    device_step(check)
    tests_step(check)
    bench_step(check, compiled=False, limit=150)
    workflow_step(check)
    grid_cost_step(check)
    bench_step(check, compiled=True, limit=600)  # what is left of the budget
    check.write()
    failed = [s.name for s in check.steps if s.status.startswith(("failed", "timed out"))]
    print(f"{len(check.steps)} steps, {len(failed)} failed or timed out: {', '.join(failed) or 'none'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

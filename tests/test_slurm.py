"""The README's SLURM command on a real single-node SLURM (Debian's slurm-wlm, no accounting database).

Needs root: the test installs slurm-wlm and munge with apt-get when they are missing and starts
munged, slurmctld and slurmd itself (tests/slurm_cluster.py); it skips, saying why, where it cannot.
A slice of the quickstart (two runs, each trained and retrained, every output kind) runs through
`--workflow-profile profiles/slurm`; train and retrain must ask SLURM for a GPU (the node has one
fake GPU) and every other cluster job must not, and the results must equal a local run's.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from slurm_cluster import SlurmUnavailable, single_node_slurm
from test_workflow import BIN, REPO, SNAKEMAKE, slice_config

pytestmark = pytest.mark.slow

PROFILE = REPO / "profiles" / "slurm"
GPU_RULES = {"train", "retrain"}
SNAKEMAKE_TIMEOUT = 900  # seconds; the slice takes about 1 minute on 2 busy cores


def slurm_slice_config() -> dict:
    """The two-run slice of tests/test_workflow.py, retrained too, on the CPU with small jobs."""
    config = slice_config()
    config["device"] = "cpu"  # the node's GPU is a fake one (File=/dev/null)
    config["gpu_lock_dir"] = "results/gpu-locks"  # the default, on: SLURM jobs must ignore it
    config["experiments"]["E1"]["retrain"] = True
    config["resources"] = {phase: {"threads": 1, "mem_mb": 1000, "runtime": 10} for phase in GPU_RULES}
    return config


def run(command: list[str], workdir: Path, env: dict[str, str], timeout: float) -> tuple[int, str, float]:
    """Run ``command`` in its own session; on timeout kill the whole session. (returncode, output, seconds)."""
    start = time.monotonic()
    process = subprocess.Popen(
        command,
        cwd=workdir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate(timeout=60)
        pytest.fail(f"{' '.join(command)} ran past {timeout} s:\n{output[-6000:]}")
    except BaseException:  # the test itself interrupted or terminated: leave nothing running
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        raise
    return process.returncode, output, time.monotonic() - start


def sbatch_calls(output: str) -> list[tuple[str, str]]:
    """(rule or group, sbatch call) of every submission, from the plugin's `--verbose` log lines."""
    calls = []
    for line in output.splitlines():
        if "sbatch call: " in line:
            call = line.split("sbatch call: ", 1)[1]
            comment = re.search(r"--comment '?rule_(\w+?)(?:_wildcards_\S*)?'?(?:\s|$)", call)
            name = comment.group(1) if comment else re.search(r"--job-name \S+ .*?--comment '?(\S+)", call).group(1)
            calls.append((name, call))
    return calls


def slurm_records(cluster) -> list[dict[str, str]]:
    """SLURM's own record of every job it ran (kept for MinJobAge = 300 s after the end, no accounting)."""
    listing = cluster.run("scontrol", "show", "job", "--oneliner").stdout
    records = []
    for line in listing.splitlines():
        if line.startswith("JobId="):
            records.append(dict(re.findall(r"(\w+)=(\S*)", line)))
    return records


def test_the_readme_slurm_command_runs_the_slice_with_gpus_only_where_asked(tmp_path, capsys):
    import pandas as pd

    config_file = tmp_path / "slice.yaml"
    config_file.write_text(yaml.safe_dump(slurm_slice_config()))
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("SLURM_JOB_ID", None)  # a test run inside someone's allocation

    with contextlib.ExitStack() as stack:
        try:
            cluster = stack.enter_context(single_node_slurm(tmp_path / "slurm", min_memory_mb=4000, min_cpus=2))
        except SlurmUnavailable as why:
            pytest.skip(f"no single-node SLURM here: {why}")

        local_dir = tmp_path / "local"
        local_dir.mkdir()
        snakemake = [str(SNAKEMAKE), "-s", str(REPO / "Snakefile"), "--configfile", str(config_file)]
        code, local_output, local_seconds = run([*snakemake, "--cores", "2"], local_dir, env, SNAKEMAKE_TIMEOUT)
        assert code == 0, local_output[-4000:]

        slurm_dir = tmp_path / "on-slurm"
        slurm_dir.mkdir()
        # The README's command, plus a --config (which used to bring the GPU lock files back) and
        # --verbose, under which the plugin logs each sbatch call.
        command = [*snakemake, "--workflow-profile", str(PROFILE), "--config", "name=on-slurm", "--verbose"]
        code, output, slurm_seconds = run(command, slurm_dir, {**cluster.env, "PATH": env["PATH"]}, SNAKEMAKE_TIMEOUT)
        job_logs = "\n".join(
            f"--- {path}\n{path.read_text(errors='replace')[-3000:]}"
            for path in (slurm_dir / ".snakemake" / "slurm_logs").rglob("*.log")
        )
        assert code == 0, output[-6000:] + job_logs + cluster.logs()
        records = slurm_records(cluster)

    # What the plugin asked for ...
    calls = sbatch_calls(output)
    names = sorted(name for name, _ in calls)
    assert names.count("train") == names.count("retrain") == 2, names
    for name, call in calls:
        if name in GPU_RULES:
            assert "--gpus=1" in call and re.search(r"(-p|--partition)[ =]'?gpu\b", call), call
        else:
            assert "--gpus" not in call and "--gres" not in call, call
            assert re.search(r"(-p|--partition)[ =]'?cpu\b", call), call
    # ... and what SLURM ran: every job finished, GPU jobs on the gpu partition holding the node's GPU.
    assert len(records) == len(calls), records
    for record in records:
        assert record["JobState"] == "COMPLETED", record
        gpu_job = any(record.get("Comment", "").startswith(f"rule_{name}_") for name in GPU_RULES)
        assert record["Partition"] == ("gpu" if gpu_job else "cpu"), record
        assert ("gpu" in record.get("TresPerJob", "")) == gpu_job, record

    results = slurm_dir / "results" / "on-slurm"
    # SLURM gave each GPU job the fake GPU (CUDA_VISIBLE_DEVICES=0), and the train command, inside a
    # SLURM job, took no lock-file GPU slot although the config's gpu_lock_dir is on.
    finals = sorted(results.glob("runs/**/final.json"))
    assert len(finals) == 4
    for final in finals:
        document = json.loads(final.read_text())
        assert (document["gpu_slot"], document["cuda_visible_devices"]) == (None, "0"), final
    assert not (slurm_dir / "results" / "gpu-locks").exists()
    train_logs = [path.read_text() for rule in GPU_RULES for path in (results / "logs" / rule).rglob("*.log")]
    assert len(train_logs) == 4 and all(re.search(r"SLURM job \d+: no GPU slot", text) for text in train_logs)

    # The same numbers as the local run.
    def rows(results: Path) -> pd.DataFrame:
        frame = pd.read_parquet(results / "runs.parquet")
        return frame.sort_values(["experiment", "run_id", "phase"]).reset_index(drop=True)

    pd.testing.assert_frame_equal(rows(results), rows(local_dir / "results" / "slice"))
    assert len(rows(results)) == 4  # two runs x two phases

    with capsys.disabled():
        print(
            f"\n[SLURM slice] {len(calls)} SLURM jobs ({', '.join(names)}): {slurm_seconds:.0f} s; "
            f"the same slice locally: {local_seconds:.0f} s"
        )
        for name, call in calls:
            request = " ".join(
                re.findall(r"(?:-p|--partition)[ =]\S+|--gpus=\S+|--mem[ =]\S+|-t \S+|--time[ =]\S+", call)
            )
            print(f"  {name}: {request}")


def local_rules() -> set[str]:
    """The rules the workflow runs on the submitting node (its `localrules:` directives) and `all`."""
    names = {"all"}
    for path in (REPO / "workflow" / "rules").glob("*.smk"):
        for block in re.findall(r"^\s*localrules:\n((?:\s+\w+,?\n)+)", path.read_text(), flags=re.M):
            names.update(re.findall(r"\w+", block))
    return names


def cluster_jobs(dry_run_output: str) -> dict[str, int]:
    """What a dry run under the SLURM profile would submit: group jobs, and the other non-local jobs by rule."""
    counts = {"group jobs": len(re.findall(r"^\[[^]]*\] Group job ", dry_run_output, flags=re.M))}
    local = local_rules()
    for name in re.findall(r"^rule (\w+):$", dry_run_output, flags=re.M):  # group members are indented
        if name not in local:
            counts[name] = counts.get(name, 0) + 1
    return counts


def test_the_paper_grid_submits_its_small_steps_as_a_few_group_jobs(tmp_path):
    """Measured for README.md ("Run on a SLURM cluster"): one SLURM job per train/retrain, and
    partition, fit_lv and poison in group jobs of `group-components` of their DAG components each."""
    profile = yaml.safe_load((PROFILE / "config.yaml").read_text())
    per_group = int(dict(item.split("=") for item in profile["group-components"])["prep"])
    result = subprocess.run(
        [str(SNAKEMAKE), "-s", str(REPO / "Snakefile"), "-d", str(tmp_path), "-n", "--workflow-profile", str(PROFILE)]
        + ["--configfile", str(REPO / "config" / "config.yaml")],
        capture_output=True,
        text=True,
        env={**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"},
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    counts = cluster_jobs(result.stdout + result.stderr)
    # A split's partitions are the root of its component (its LV fit and poisoned sets hang off it).
    partitions = 953  # tests/test_workflow.py::test_paper_dry_run_job_counts
    assert counts == {"group jobs": -(-partitions // per_group), "train": 952, "retrain": 630}
    assert sum(counts.values()) == 1606  # of 4,725 jobs


@pytest.mark.parametrize("attempt", [1, 2])
def test_a_retried_job_gets_its_run_time_times_the_attempt(tmp_path, attempt):
    """The profile's `retries: 1` reruns a failed job with `--attempt 2`: every run time doubles (minutes)."""
    config_file = tmp_path / "slice.yaml"
    config_file.write_text(yaml.safe_dump(slurm_slice_config()))  # train and retrain: 10 minutes
    result = subprocess.run(
        [str(SNAKEMAKE), "-s", str(REPO / "Snakefile"), "-d", str(tmp_path), "-n", "--workflow-profile", str(PROFILE)]
        + ["--configfile", str(config_file), "--attempt", str(attempt)],
        capture_output=True,
        text=True,
        env={**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"},
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    runtimes = {}
    for rule, resources in re.findall(r"^\s*rule (\w+):\n(?:\s+\w+:.*\n)*?\s+resources: (.*)$", result.stdout, re.M):
        runtimes.setdefault(rule, set()).add(int(re.search(r"\bruntime=(\d+)", resources).group(1)))
    expected = {"train": 10, "retrain": 10, "partition": 2, "poison": 2, "fit_lv": 10, "aggregate": 30}
    assert {rule: runtimes[rule] for rule in expected} == {
        rule: {minutes * attempt} for rule, minutes in expected.items()
    }

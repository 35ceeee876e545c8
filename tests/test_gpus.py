"""GPU slots: distinct devices for concurrent jobs, no-GPU pass-through, CUDA_VISIBLE_DEVICES mapping."""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from backdoor_eval.gpus import JOBS_PER_GPU_ENV, count_gpus, gpu_slot, slots

HOLDER = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    from backdoor_eval.gpus import gpu_slot

    lock_dir, release = sys.argv[1], Path(sys.argv[2])
    num_gpus, jobs_per_gpu = (int(value) for value in sys.argv[3:5])
    with gpu_slot(lock_dir, num_gpus=num_gpus, poll_seconds=0.05, jobs_per_gpu=jobs_per_gpu) as slot:
        print(os.environ["CUDA_VISIBLE_DEVICES"], slot, flush=True)
        while not release.exists():
            time.sleep(0.02)
    """
)


@pytest.fixture
def clean_env(monkeypatch):
    names = ("CUDA_VISIBLE_DEVICES", "BACKDOOR_EVAL_NUM_GPUS", "BACKDOOR_EVAL_GPU_LOCK_DIR", "SLURM_JOB_ID")
    for name in (*names, JOBS_PER_GPU_ENV):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def start_holder(lock_dir: Path, release: Path, num_gpus: int = 2, jobs_per_gpu: int = 1) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    command = [sys.executable, "-c", HOLDER, str(lock_dir), str(release), str(num_gpus), str(jobs_per_gpu)]
    return subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)


def read_line(process: subprocess.Popen, timeout: float) -> str | None:
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    return process.stdout.readline().strip() if ready else None


def test_concurrent_processes_get_different_gpus_and_a_third_waits(tmp_path):
    releases = [tmp_path / f"release{i}" for i in range(3)]
    holders = [start_holder(tmp_path / "locks", release) for release in releases[:2]]
    try:
        lines = [read_line(p, timeout=30) for p in holders]
        assert sorted(lines) == ["0 0", "1 1"]
        # Both slots are held: a third job polls until one frees.
        waiter = start_holder(tmp_path / "locks", releases[2])
        holders.append(waiter)
        assert read_line(waiter, timeout=0.5) is None
        freed = lines.index("1 1")
        releases[freed].touch()
        assert read_line(waiter, timeout=30) == "1 1"
    finally:
        for release in releases:
            release.touch()
        for p in holders:
            assert p.wait(timeout=30) == 0


def test_with_two_jobs_per_gpu_two_processes_share_the_one_gpu_and_a_third_waits(tmp_path):
    """jobs_per_gpu 2 on one (fake) GPU: two jobs hold its two slots at once, both on device 0; a third polls."""
    releases = [tmp_path / f"release{i}" for i in range(3)]
    holders = [start_holder(tmp_path / "locks", release, num_gpus=1, jobs_per_gpu=2) for release in releases[:2]]
    try:
        lines = [read_line(p, timeout=30) for p in holders]
        assert sorted(lines) == ["0 0", "0 1"]
        assert sorted(path.name for path in (tmp_path / "locks").iterdir()) == ["gpu0-1.lock", "gpu0.lock"]
        waiter = start_holder(tmp_path / "locks", releases[2], num_gpus=1, jobs_per_gpu=2)
        holders.append(waiter)
        assert read_line(waiter, timeout=0.5) is None
        freed = lines.index("0 1")
        releases[freed].touch()
        assert read_line(waiter, timeout=30) == "0 1"
    finally:
        for release in releases:
            release.touch()
        for p in holders:
            assert p.wait(timeout=30) == 0


def test_jobs_spread_over_the_gpus_before_they_share_one(clean_env, tmp_path):
    assert slots(["0", "1"], 2) == [("0", 0), ("1", 0), ("0", 1), ("1", 1)]
    with contextlib.ExitStack() as held:
        for taken, (slot, device) in enumerate([(0, "0"), (1, "1"), (2, "0"), (3, "1")]):
            with gpu_slot(tmp_path, num_gpus=2, jobs_per_gpu=2) as index:
                assert (index, os.environ["CUDA_VISIBLE_DEVICES"]) == (slot, device), taken
            # Another job now holds that slot (a second open file description conflicts, even in-process).
            name = f"gpu{device}.lock" if slot < 2 else f"gpu{device}-1.lock"
            busy = held.enter_context(open(tmp_path / name, "a+"))
            fcntl.flock(busy, fcntl.LOCK_EX | fcntl.LOCK_NB)
    # The workflow passes the config's jobs_per_gpu in the jobs' environment.
    with open(tmp_path / "gpu0.lock", "a+") as busy:
        fcntl.flock(busy, fcntl.LOCK_EX | fcntl.LOCK_NB)
        clean_env.setenv(JOBS_PER_GPU_ENV, "2")
        with gpu_slot(tmp_path, num_gpus=1) as index:
            assert (index, os.environ["CUDA_VISIBLE_DEVICES"]) == (1, "0")
    message = "jobs_per_gpu 0 is not allowed; allowed: a whole number >= 1"
    with pytest.raises(ValueError, match=message), gpu_slot(tmp_path, num_gpus=1, jobs_per_gpu=0):
        pass


def test_zero_gpus_leaves_the_environment_alone(clean_env, tmp_path):
    with gpu_slot(tmp_path, num_gpus=0) as slot:
        assert slot is None and "CUDA_VISIBLE_DEVICES" not in os.environ
    clean_env.setenv("CUDA_VISIBLE_DEVICES", "")
    with gpu_slot(tmp_path) as slot:
        assert slot is None and os.environ["CUDA_VISIBLE_DEVICES"] == ""
    assert list(tmp_path.iterdir()) == []  # no lock files either


def test_slot_maps_through_an_existing_cuda_visible_devices(clean_env, tmp_path):
    clean_env.setenv("CUDA_VISIBLE_DEVICES", "4,6")
    # Another job holds GPU 4 (a second open file description conflicts, even in-process).
    with open(tmp_path / "gpu4.lock", "a+") as busy:
        fcntl.flock(busy, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with gpu_slot(tmp_path) as slot:
            assert slot == 1
            assert os.environ["CUDA_VISIBLE_DEVICES"] == "6"
            assert (tmp_path / "gpu6.lock").read_text().strip() == str(os.getpid())
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "4,6"
    # Released on exit: the next job gets the first device again.
    with gpu_slot(tmp_path) as slot:
        assert slot == 0 and os.environ["CUDA_VISIBLE_DEVICES"] == "4"


def test_slot_is_released_when_the_block_raises(clean_env, tmp_path):
    with pytest.raises(RuntimeError), gpu_slot(tmp_path, num_gpus=1):
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "0"
        raise RuntimeError("job failed")
    assert "CUDA_VISIBLE_DEVICES" not in os.environ
    with open(tmp_path / "gpu0.lock", "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)  # would raise if still held


def fake_nvidia_smi(folder: Path, output: str) -> None:
    script = folder / "nvidia-smi"
    # Shell builtins only: the tests run it with PATH holding nothing else.
    lines = "".join(f"echo '{line}'\n" for line in output.splitlines())
    script.write_text(f"#!/bin/sh\n{lines}")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)


def test_count_order_of_precedence(clean_env, tmp_path):
    fake_nvidia_smi(
        tmp_path,
        "GPU 0: NVIDIA H100 (UUID: GPU-a)\n  MIG 1g.10gb Device 0: (UUID: MIG-b)\nGPU 1: NVIDIA H100 (UUID: GPU-c)\n",
    )
    clean_env.setenv("PATH", str(tmp_path))
    assert count_gpus() == 2  # nvidia-smi -L, MIG lines not counted
    clean_env.setenv("CUDA_VISIBLE_DEVICES", "3")
    assert count_gpus() == 1
    clean_env.setenv("BACKDOOR_EVAL_NUM_GPUS", "4")
    assert count_gpus() == 4
    assert count_gpus(num_gpus=3) == 3


def test_no_nvidia_smi_means_no_gpus(clean_env, tmp_path):
    clean_env.setenv("PATH", str(tmp_path))  # an empty folder: no nvidia-smi
    assert count_gpus() == 0


def test_bad_counts_are_value_errors(clean_env, tmp_path):
    clean_env.setenv("BACKDOOR_EVAL_NUM_GPUS", "two")
    with pytest.raises(ValueError, match="BACKDOOR_EVAL_NUM_GPUS 'two' is not a GPU count"):
        count_gpus()
    clean_env.delenv("BACKDOOR_EVAL_NUM_GPUS")
    clean_env.setenv("CUDA_VISIBLE_DEVICES", "1")
    with pytest.raises(ValueError, match="num_gpus 2 exceeds the 1 devices"), gpu_slot(tmp_path, num_gpus=2):
        pass


def train_args(tmp_path: Path) -> list[str]:
    """A `train` command line with a GPU lock folder (its inputs are never read: the phase is replaced)."""
    return [
        "train",
        "--store",
        "s",
        "--partitions",
        "p.npz",
        "--poisoned",
        "o",
        "--model",
        "small_cnn",
        "--seed",
        "0",
        "--out-model",
        str(tmp_path / "model.pt"),
        "--out-epochs",
        str(tmp_path / "epochs.parquet"),
        "--out-final",
        str(tmp_path / "final.json"),
        "--checkpoint",
        str(tmp_path / "poison.pt"),
        "--gpu-lock-dir",
        str(tmp_path / "locks"),
    ]


def spy_on_phases(monkeypatch) -> list[tuple[str, int | None, str | None]]:
    """Replace the phase's work: record (phase, GPU slot, CUDA_VISIBLE_DEVICES) as the phase sees them."""
    import backdoor_eval.phase
    from backdoor_eval import locks

    seen = []

    def fake_run_locked(job, gpu_slot):
        assert locks.is_held(job.lock_file)
        seen.append((job.phase, gpu_slot, os.environ.get("CUDA_VISIBLE_DEVICES")))
        return {}

    monkeypatch.setattr(backdoor_eval.phase, "_run_locked", fake_run_locked)
    return seen


def test_train_command_runs_its_phase_in_a_gpu_slot(clean_env, tmp_path):
    """`train --gpu-lock-dir` takes a slot itself, inside the phase's lock: the phase sees its device and slot,
    released afterwards."""
    from backdoor_eval.cli import main

    seen = spy_on_phases(clean_env)
    clean_env.setenv("BACKDOOR_EVAL_NUM_GPUS", "2")
    args = train_args(tmp_path)
    (tmp_path / "locks").mkdir()
    with open(tmp_path / "locks" / "gpu0.lock", "a+") as busy:
        fcntl.flock(busy, fcntl.LOCK_EX | fcntl.LOCK_NB)  # another job holds GPU 0
        assert main(args) == 0
    assert seen == [("poison", 1, "1")]
    assert "CUDA_VISIBLE_DEVICES" not in os.environ
    assert main(args[:-2]) == 0  # no lock dir: no slot, environment untouched
    assert seen[-1] == ("poison", None, None)
    # --jobs-per-gpu 2: GPU 0's second slot is free, so the job shares GPU 0 (slots 0, 1, then 0's second).
    clean_env.setenv("BACKDOOR_EVAL_NUM_GPUS", "1")
    with open(tmp_path / "locks" / "gpu0.lock", "a+") as busy:
        fcntl.flock(busy, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert main([*args, "--jobs-per-gpu", "2"]) == 0
    assert seen[-1] == ("poison", 1, "0")


def test_inside_a_slurm_job_the_train_command_takes_no_gpu_slot(clean_env, tmp_path, caplog):
    """SLURM gave the job its GPU (CUDA_VISIBLE_DEVICES=0 on every node): `--gpu-lock-dir` is inert there, so
    jobs on different nodes never wait on each other's lock files, whatever the config's gpu_lock_dir."""
    from backdoor_eval.cli import main

    seen = spy_on_phases(clean_env)
    clean_env.setenv("CUDA_VISIBLE_DEVICES", "0")
    clean_env.setenv("SLURM_JOB_ID", "4242")
    with caplog.at_level("INFO", logger="backdoor_eval.gpus"):
        assert main(train_args(tmp_path)) == 0
    assert seen == [("poison", None, "0")]
    assert not (tmp_path / "locks").exists()  # no lock file was even created
    assert f"SLURM job 4242: no GPU slot from {tmp_path / 'locks'}" in caplog.text
    clean_env.delenv("SLURM_JOB_ID")  # the same command outside SLURM takes a slot
    assert main(train_args(tmp_path)) == 0
    assert seen[-1] == ("poison", 0, "0")

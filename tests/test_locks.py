"""One process per run phase: a second holder fails at once naming the first; a killed holder frees the lock."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from backdoor_eval import locks
from backdoor_eval.cli import main

# Holds the lock on argv[1] until argv[2] exists; says "held" once it has it.
HOLDER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from backdoor_eval import locks

    with locks.hold(sys.argv[1], "the poison phase of run r"):
        print("held", flush=True)
        while not Path(sys.argv[2]).exists():
            time.sleep(0.02)
    """
)


@pytest.fixture
def holder(tmp_path):
    """Start a process holding ``tmp_path/ckpt/poison.pt.lock``; yields (process, lock file, release file)."""
    lock_file, release = tmp_path / "ckpt" / "poison.pt.lock", tmp_path / "release"
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(lock_file), str(release)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    try:
        assert proc.stdout.readline().strip() == "held"
        yield proc, lock_file, release
    finally:
        proc.kill()
        proc.wait()


def test_a_second_holder_fails_at_once_naming_the_first(holder):
    proc, lock_file, release = holder
    assert locks.is_held(lock_file)
    tic = time.monotonic()
    with pytest.raises(locks.LockHeldError) as error, locks.hold(lock_file, "the poison phase of run r"):
        pytest.fail("the lock was taken twice")
    assert time.monotonic() - tic < 5  # no waiting
    message = str(error.value)
    assert message.startswith("the poison phase of run r is already running in another process")
    assert f"pid {proc.pid} on host {socket.gethostname()}" in message
    assert f"lock file {lock_file}" in message
    assert f"`kill {proc.pid}`" in message and "then run the workflow again" in message
    # The failed attempt left the holder's record alone; the holder removes it when it ends normally.
    assert locks.read_holder(lock_file)["pid"] == proc.pid
    release.touch()
    assert proc.wait(timeout=30) == 0
    assert locks.read_holder(lock_file) is None and not locks.is_held(lock_file)
    assert lock_file.exists() and lock_file.stat().st_size == 0  # the empty lock file stays (see backdoor_eval.locks)


def test_a_sigkilled_holder_leaves_no_stale_lock(holder):
    proc, lock_file, _ = holder
    assert locks.held_locks(lock_file.parent) == [lock_file]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not locks.is_held(lock_file)
    assert locks.held_locks(lock_file.parent) == []
    assert locks.read_holder(lock_file)["pid"] == proc.pid  # the killed holder's record, replaced by the next
    with locks.hold(lock_file, "the poison phase of run r"):
        assert locks.read_holder(lock_file)["pid"] == os.getpid()
    assert locks.read_holder(lock_file) is None


def test_train_beside_a_running_phase_fails_at_once_and_touches_nothing(holder, tmp_path, capsys):
    """The CLI exits 75 with the message before reading any input; the holder's checkpoint is untouched."""
    proc, lock_file, _ = holder
    checkpoint = lock_file.with_suffix("")  # ckpt/poison.pt
    checkpoint.write_bytes(b"the running phase's checkpoint")
    out = tmp_path / "runs" / "r1" / "poison"
    args = ["train", "--store", "absent", "--partitions", "absent.npz", "--poisoned", "absent", "--model", "small_cnn"]
    args += ["--seed", "0", "--checkpoint", str(checkpoint)]
    args += ["--out-model", str(out / "model.pt"), "--out-epochs", str(out / "e.parquet")]
    args += ["--out-final", str(out / "final.json")]
    assert main(args) == os.EX_TEMPFAIL
    err = capsys.readouterr().err
    assert f"backdoor-eval train: error: the poison phase of run {out.parent} is already running" in err
    assert f"pid {proc.pid}" in err and str(lock_file) in err
    assert checkpoint.read_bytes() == b"the running phase's checkpoint"
    assert not out.exists()
    assert locks.read_holder(lock_file)["pid"] == proc.pid


def test_the_lock_sits_beside_the_checkpoint_and_a_job_without_one_takes_none(tmp_path):
    from backdoor_eval.phase import PhaseJob

    paths = {name: tmp_path / name for name in ("store", "partitions", "poisoned")}
    outputs = {f"out_{name}": tmp_path / "p" / file for name, file in (("model", "model.pt"), ("epochs", "e.parquet"))}
    job = PhaseJob("poison", **paths, **outputs, out_final=tmp_path / "p" / "final.json", model="small_cnn", seed=0)
    assert job.lock_file is None
    job.checkpoint = tmp_path / "ckpt" / "poison.pt"
    assert job.lock_file == tmp_path / "ckpt" / "poison.pt.lock"


def test_stale_temporaries_in_folders_still_in_use_are_kept(tmp_path):
    from backdoor_eval.io import remove_stale_temporaries

    for run in ("r1", "r2"):
        (tmp_path / "checkpoints" / run).mkdir(parents=True)
        (tmp_path / "checkpoints" / run / ".poison.pt.abc.tmp").write_bytes(b"x" * 10)
    assert remove_stale_temporaries(tmp_path, keep=[tmp_path / "checkpoints" / "r2"]) == (1, 10)
    assert [p.parent.name for p in tmp_path.rglob("*.tmp")] == ["r2"]
    assert locks.held_locks(tmp_path / "absent") == []
    assert not locks.is_held(tmp_path / "no.lock") and not (tmp_path / "no.lock").exists()  # a probe creates nothing

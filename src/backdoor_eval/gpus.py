"""GPU slots: give concurrent jobs on one machine distinct GPUs.

Snakemake's ``resources: gpu=1`` with ``--resources gpu=N`` caps how many
train jobs run at once, but does not say *which* GPU each job gets. A job
takes a slot with :func:`gpu_slot`: the first GPU whose lock file
(``lock_dir/gpu{device}.lock``) it can ``flock`` without blocking. With
``jobs_per_gpu`` = k, each GPU has k slots (``gpu{device}.lock``,
``gpu{device}-1.lock``, ...), so k jobs share it: ``--resources gpu=N`` then
counts slots (GPUs x k). The lock
lives as long as the job's process holds the file open, so a killed job
frees its GPU at once and no stale state is left behind.

Inside a SLURM job (``SLURM_JOB_ID`` set) SLURM has already given the job
its GPUs through ``CUDA_VISIBLE_DEVICES``: :func:`slurm_job_id` tells the
phase (:func:`backdoor_eval.phase.run_phase`) to take no slot there, whatever
lock folder it was given. Lock files named by device index on a shared file
system would otherwise make jobs on different nodes, each seeing its own
GPU as device 0, wait for one another.

No torch here: this must run before anything touches CUDA, since
``CUDA_VISIBLE_DEVICES`` is read when CUDA initialises.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)

NUM_GPUS_ENV = "BACKDOOR_EVAL_NUM_GPUS"
# The workflow sets it from the config's jobs_per_gpu: an environment variable, not a command-line
# option, so that changing it does not change the train jobs' parameters (Snakemake would rerun them).
JOBS_PER_GPU_ENV = "BACKDOOR_EVAL_JOBS_PER_GPU"
LOCK_DIR_ENV = "BACKDOOR_EVAL_GPU_LOCK_DIR"
SLURM_JOB_ENV = "SLURM_JOB_ID"


def slurm_job_id() -> str | None:
    """The SLURM job this process runs in (``$SLURM_JOB_ID``), or None outside SLURM."""
    return os.environ.get(SLURM_JOB_ENV, "").strip() or None


def visible_devices() -> list[str] | None:
    """Entries of ``CUDA_VISIBLE_DEVICES`` (``[]`` when set but empty), or None when unset."""
    value = os.environ.get("CUDA_VISIBLE_DEVICES")
    if value is None:
        return None
    return [entry.strip() for entry in value.split(",") if entry.strip()]


def count_gpus(num_gpus: int | None = None) -> int:
    """Number of GPUs to share: ``num_gpus``, else ``$BACKDOOR_EVAL_NUM_GPUS``, else the
    entries of ``CUDA_VISIBLE_DEVICES``, else the lines of ``nvidia-smi -L`` (0 without it)."""
    if num_gpus is not None:
        return _check_count(num_gpus, "num_gpus")
    if os.environ.get(NUM_GPUS_ENV, "").strip():
        return _check_count(os.environ[NUM_GPUS_ENV], NUM_GPUS_ENV)
    devices = visible_devices()
    if devices is not None:
        return len(devices)
    try:
        listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30, check=False)
    except (FileNotFoundError, PermissionError, subprocess.TimeoutExpired):
        return 0
    if listing.returncode != 0:
        return 0
    # MIG devices are listed indented under their GPU; count GPUs only.
    return sum(1 for line in listing.stdout.splitlines() if line.startswith("GPU "))


def _check_count(value: object, what: str) -> int:
    try:
        count = int(str(value).strip())
    except ValueError:
        count = -1
    if count < 0:
        raise ValueError(f"{what} {value!r} is not a GPU count; allowed: a whole number >= 0")
    return count


def default_lock_dir() -> Path:
    """``$BACKDOOR_EVAL_GPU_LOCK_DIR``, else a per-user folder in the temp dir (machine-wide)."""
    if os.environ.get(LOCK_DIR_ENV):
        return Path(os.environ[LOCK_DIR_ENV])
    return Path(tempfile.gettempdir()) / f"backdoor-eval-gpu-locks-{os.getuid()}"


def _lock_name(device: str, share: int = 0) -> str:
    # Device ids may be GPU UUIDs (GPU-8f3e...) or MIG ids; keep them file-name safe.
    # The first job on a device keeps the one-job-per-GPU name.
    return "gpu" + re.sub(r"[^A-Za-z0-9_.-]", "_", device) + (f"-{share}" if share else "") + ".lock"


def slots(devices: list[str], jobs_per_gpu: int) -> list[tuple[str, int]]:
    """``(device, share)`` of every slot, in the order jobs take them: each device's first share,
    then each device's second, ..., so that jobs spread over the GPUs before they share one."""
    return [(device, share) for share in range(jobs_per_gpu) for device in devices]


@contextlib.contextmanager
def gpu_slot(
    lock_dir: str | os.PathLike | None = None,
    num_gpus: int | None = None,
    poll_seconds: float = 1.0,
    jobs_per_gpu: int | None = None,
) -> Iterator[int | None]:
    """Hold a free GPU slot for the ``with`` block; yield the slot index (None without GPUs).

    Each GPU has ``jobs_per_gpu`` slots (lock files; default ``$BACKDOOR_EVAL_JOBS_PER_GPU``,
    else 1), so that many jobs share it (:func:`slots` gives their order). With no GPUs (see :func:`count_gpus`) the
    environment is left alone. Otherwise the first slot whose lock file can be
    ``flock``-ed without blocking is taken; when all are busy, it polls every
    ``poll_seconds`` until one frees. ``CUDA_VISIBLE_DEVICES`` is set to the
    slot's device -- the i-th entry of an existing ``CUDA_VISIBLE_DEVICES``
    list, else ``i`` -- and restored on exit, when the lock is released.
    """
    if jobs_per_gpu is None:
        jobs_per_gpu = os.environ.get(JOBS_PER_GPU_ENV, "").strip() or 1
    jobs_per_gpu = _check_count(jobs_per_gpu, "jobs_per_gpu")
    if jobs_per_gpu < 1:
        raise ValueError(f"jobs_per_gpu {jobs_per_gpu!r} is not allowed; allowed: a whole number >= 1")
    count = count_gpus(num_gpus)
    if count == 0:
        yield None
        return
    devices = visible_devices()
    if devices is None:
        devices = [str(i) for i in range(count)]
    elif count > len(devices):
        raise ValueError(
            f"num_gpus {count} exceeds the {len(devices)} devices in CUDA_VISIBLE_DEVICES={os.environ['CUDA_VISIBLE_DEVICES']!r}; "
            f"allowed: at most {len(devices)}"
        )
    devices = devices[:count]
    order = slots(devices, jobs_per_gpu)
    folder = Path(lock_dir) if lock_dir is not None else default_lock_dir()
    folder.mkdir(parents=True, exist_ok=True)

    handle, slot = None, None
    waited = False
    while slot is None:
        for index, (device, share) in enumerate(order):
            candidate = open(folder / _lock_name(device, share), "a+")  # noqa: SIM115 -- held open: it is the lock
            try:
                fcntl.flock(candidate, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                candidate.close()
                continue
            handle, slot = candidate, index
            break
        if slot is None:
            if not waited:
                log.info("all %d GPU slots in %s are busy; waiting for one to free", len(order), folder)
                waited = True
            time.sleep(poll_seconds)

    # Who holds the slot, for whoever inspects the lock folder.
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    previous = os.environ.get("CUDA_VISIBLE_DEVICES")
    device = order[slot][0]
    os.environ["CUDA_VISIBLE_DEVICES"] = device
    log.info("GPU slot %d: CUDA_VISIBLE_DEVICES=%s", slot, device)
    try:
        yield slot
    finally:
        if previous is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = previous
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


def job_slot(
    lock_dir: str | os.PathLike | None, jobs_per_gpu: int | None = None
) -> contextlib.AbstractContextManager[int | None]:
    """The GPU slot of one training job: :func:`gpu_slot` in ``lock_dir`` (``jobs_per_gpu`` slots a
    device); none without a lock folder, or inside a SLURM job, where SLURM has assigned the job's
    GPUs (:func:`slurm_job_id`)."""
    if lock_dir is None:
        return contextlib.nullcontext(None)
    if (slurm_job := slurm_job_id()) is not None:
        log.info(
            "SLURM job %s: no GPU slot from %s; SLURM assigned this job's GPUs (CUDA_VISIBLE_DEVICES=%s)",
            slurm_job,
            lock_dir,
            os.environ.get("CUDA_VISIBLE_DEVICES", "unset"),
        )
        return contextlib.nullcontext(None)
    return gpu_slot(lock_dir=lock_dir, jobs_per_gpu=jobs_per_gpu)

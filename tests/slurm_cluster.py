"""A throw-away single-node SLURM on loopback, for tests: munge, slurmctld and slurmd in one temp folder.

:func:`single_node_slurm` installs Debian's ``slurm-wlm`` and ``munge`` when they are missing (as root,
with ``apt-get``), writes a ``slurm.conf`` for this machine (its real CPUs and memory, one fake GPU:
``Gres=gpu:1`` with ``File=/dev/null``, partitions ``cpu`` (default) and ``gpu``, no accounting
database), starts the three daemons in the foreground as its own children and stops them, by pid,
on exit (should the test process be killed, they get SIGKILL as it dies). Clients find the cluster through ``SLURM_CONF`` (:attr:`Cluster.env`), except ``srun``
inside a job: the plugin's job step drops every ``SLURM_*`` variable but the job's identity, so
``srun`` reads the default ``/etc/slurm/slurm.conf``. That path is made a link to the temp
``slurm.conf`` while the cluster runs, and only where the machine has none of its own (a machine
with one is a real SLURM host: the test cluster is not started there). Whatever prevents it (not
root, no apt, a daemon that does not come up) raises :class:`SlurmUnavailable` with the reason,
which the tests turn into a skip.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "scontrol", "scancel", "sinfo")
PACKAGES = ("slurm-wlm", "munge")
SEARCH_PATH = os.pathsep.join((os.environ.get("PATH", ""), "/usr/sbin", "/sbin", "/usr/bin"))
MARKER = "# A one-node test cluster on loopback (tests/slurm_cluster.py)"
DEFAULT_CONF = Path("/etc/slurm/slurm.conf")  # Debian's compiled-in default, what srun reads without SLURM_CONF


class SlurmUnavailable(RuntimeError):
    """SLURM cannot run here; the message says why."""


@dataclass
class Cluster:
    root: Path
    conf: Path
    env: dict[str, str]
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    default_conf_link: Path | None = None  # DEFAULT_CONF, while it is our link

    def run(self, *command: str, timeout: float = 30, check: bool = True) -> subprocess.CompletedProcess:
        """A SLURM client command against this cluster."""
        return subprocess.run(
            [binary(command[0]), *command[1:]],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=timeout,
            check=check,
        )

    def logs(self, tail: int = 2000) -> str:
        return "\n".join(
            f"--- {path.name}\n{path.read_text(errors='replace')[-tail:]}" for path in sorted(self.root.glob("*.log"))
        )


def binary(name: str) -> str:
    found = shutil.which(name, path=SEARCH_PATH)
    if found is None:
        raise SlurmUnavailable(f"{name} is not installed")
    return found


def missing_binaries() -> list[str]:
    return [name for name in (*DAEMONS, *CLIENTS) if shutil.which(name, path=SEARCH_PATH) is None]


def ensure_installed() -> None:
    """Install slurm-wlm and munge with apt-get when a binary is missing; SlurmUnavailable if that cannot be."""
    missing = missing_binaries()
    if not missing:
        return
    if os.geteuid() != 0:
        raise SlurmUnavailable(f"{', '.join(missing)} missing, and installing them needs root")
    apt = shutil.which("apt-get", path=SEARCH_PATH)
    if apt is None:
        raise SlurmUnavailable(f"{', '.join(missing)} missing, and there is no apt-get to install {PACKAGES}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = [apt, "install", "-y", "-q", "--no-install-recommends", *PACKAGES]
    # The packages' scripts would start the system's own munge/slurm services; a policy-rc.d that
    # denies every start (only while installing, and only if the machine has none) keeps them off.
    policy = Path("/usr/sbin/policy-rc.d")
    own_policy = not policy.exists()
    try:
        if own_policy:
            policy.write_text(
                "#!/bin/sh\n# written by backdoor-eval's SLURM test while installing slurm-wlm\nexit 101\n"
            )
            policy.chmod(0o755)
        result = subprocess.run(install, capture_output=True, text=True, env=env, timeout=900)
        if result.returncode != 0:  # a stale package list: refresh it once
            subprocess.run([apt, "update", "-q"], capture_output=True, text=True, env=env, timeout=600)
            result = subprocess.run(install, capture_output=True, text=True, env=env, timeout=900)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise SlurmUnavailable(f"apt-get install {' '.join(PACKAGES)} failed: {error}") from error
    finally:
        if own_policy:
            policy.unlink(missing_ok=True)
    if result.returncode != 0 or missing_binaries():
        raise SlurmUnavailable(
            f"apt-get install {' '.join(PACKAGES)} failed (exit {result.returncode}): {result.stderr[-1500:]}"
        )


def die_with_parent() -> None:
    """In the child before exec: SIGKILL it when the process that started it dies (Linux prctl), so a
    killed test leaves no daemon behind."""
    import ctypes

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def node_hardware() -> dict[str, str]:
    """This machine as slurmd sees it (CPUs, sockets, cores, threads, RealMemory)."""
    out = subprocess.run([binary("slurmd"), "-C"], capture_output=True, text=True, timeout=30, check=True).stdout
    fields = dict(re.findall(r"(\w+)=(\S+)", out.splitlines()[0]))
    keep = ("CPUs", "Boards", "SocketsPerBoard", "CoresPerSocket", "ThreadsPerCore", "RealMemory")
    return {key: fields[key] for key in keep if key in fields}


def slurm_conf(root: Path, hardware: dict[str, str]) -> str:
    node = " ".join(f"{key}={value}" for key, value in hardware.items())
    return f"""\
{MARKER}; no accounting database.
ClusterName=backdoor-eval-test
SlurmctldHost=localhost
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={root}/munge.socket
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
ReturnToService=2
MinJobAge=300
GresTypes=gpu
NodeName=localhost NodeHostname=localhost NodeAddr=127.0.0.1 {node} Gres=gpu:1 State=UNKNOWN
PartitionName=cpu Nodes=localhost Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=localhost MaxTime=INFINITE State=UP
"""


def wait_until(condition, what: str, cluster: Cluster, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for name, process in cluster.processes.items():
            if process.poll() is not None:
                raise SlurmUnavailable(
                    f"{name} exited ({process.returncode}) while waiting for {what}:\n{cluster.logs()}"
                )
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            if condition():
                return
        time.sleep(0.5)
    raise SlurmUnavailable(f"timed out after {timeout:.0f} s waiting for {what}:\n{cluster.logs()}")


def start(root: Path, min_memory_mb: int = 0, min_cpus: int = 1) -> Cluster:
    """Start munged, slurmctld and slurmd under ``root`` (the caller stops them with :func:`stop`)."""
    if os.geteuid() != 0:
        raise SlurmUnavailable("slurmd and munged must run as root")
    ensure_installed()
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o700)  # munged refuses a key or socket in a folder others may write
    for folder in ("state", "spool"):
        (root / folder).mkdir(exist_ok=True)
    if DEFAULT_CONF.is_symlink() and (not DEFAULT_CONF.exists() or DEFAULT_CONF.read_text().startswith(MARKER)):
        DEFAULT_CONF.unlink()  # left by a test cluster whose process was killed (its daemons died with it)
    if DEFAULT_CONF.exists():
        raise SlurmUnavailable(
            f"{DEFAULT_CONF} exists: this machine has a SLURM of its own, which the test leaves alone"
        )
    hardware = node_hardware()
    if int(hardware.get("RealMemory", 0)) < min_memory_mb or int(hardware.get("CPUs", 0)) < min_cpus:
        raise SlurmUnavailable(
            f"the node has {hardware.get('CPUs')} CPUs and {hardware.get('RealMemory')} MB; "
            f"the test's jobs ask for up to {min_cpus} CPUs and {min_memory_mb} MB"
        )
    conf = root / "slurm.conf"
    conf.write_text(slurm_conf(root, hardware))
    (root / "gres.conf").write_text("Name=gpu File=/dev/null\n")  # a fake GPU: SLURM only counts it
    key = root / "munge.key"
    key.write_bytes(secrets.token_bytes(1024))
    key.chmod(0o400)
    env = {**os.environ, "SLURM_CONF": str(conf), "PATH": SEARCH_PATH}
    cluster = Cluster(root=root, conf=conf, env=env)

    def launch(name: str, *args: str) -> None:
        log = open(root / f"{name}.out", "w")  # noqa: SIM115 -- closed with the process
        cluster.processes[name] = subprocess.Popen(
            [binary(name), *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
        log.close()

    try:
        DEFAULT_CONF.parent.mkdir(parents=True, exist_ok=True)
        DEFAULT_CONF.symlink_to(conf)
        cluster.default_conf_link = DEFAULT_CONF
        launch(
            "munged",
            "--foreground",
            "--force",
            f"--key-file={key}",
            f"--socket={root / 'munge.socket'}",
            f"--pid-file={root / 'munged.pid'}",
            f"--log-file={root / 'munged.log'}",
            f"--seed-file={root / 'munged.seed'}",
        )
        wait_until(lambda: (root / "munge.socket").exists(), "munged's socket", cluster, timeout=30)
        launch("slurmctld", "-D", "-f", str(conf))
        wait_until(lambda: cluster.run("scontrol", "ping", check=False).returncode == 0, "slurmctld", cluster, 60)
        launch("slurmd", "-D", "-f", str(conf), "-N", "localhost")

        def node_idle() -> bool:
            state = cluster.run("sinfo", "-h", "-n", "localhost", "-o", "%T", check=False).stdout
            return "idle" in state.split()

        wait_until(node_idle, "the node to be idle", cluster, 90)
    except BaseException:
        stop(cluster)
        raise
    return cluster


def own_processes(cluster: Cluster) -> list[int]:
    """Pids of the processes this cluster's daemons started (job steps, jobs): those with its SLURM_CONF."""
    marker = f"SLURM_CONF={cluster.conf}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if marker in (entry / "environ").read_bytes().split(b"\0"):
                pids.append(int(entry.name))
    return pids


def stop(cluster: Cluster) -> None:
    """Cancel every job, then stop the daemons (slurmd, slurmctld, munged), each by its pid."""
    if "slurmctld" in cluster.processes and cluster.processes["slurmctld"].poll() is None:
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            cluster.run("scancel", "--user", str(os.geteuid()), check=False)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                listing = cluster.run("squeue", "-h", "-t", "PENDING,RUNNING,COMPLETING", "-o", "%i", check=False)
                if listing.returncode != 0 or not listing.stdout.strip():
                    break
                time.sleep(0.5)
    for name in ("slurmd", "slurmctld", "munged"):
        process = cluster.processes.get(name)
        if process is None or process.poll() is not None:
            continue
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
    # Job steps outlive slurmd when a job did not end; they carry this cluster's SLURM_CONF.
    for pid in own_processes(cluster):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    link = cluster.default_conf_link
    if link is not None and link.is_symlink() and link.readlink() == cluster.conf:
        link.unlink()
        cluster.default_conf_link = None


@contextlib.contextmanager
def single_node_slurm(root: Path, min_memory_mb: int = 0, min_cpus: int = 1) -> Iterator[Cluster]:
    """:func:`start`, then :func:`stop` on leaving, also when the process is sent SIGTERM meanwhile."""

    def terminated(signum, frame):
        raise SystemExit(f"terminated (signal {signum}) while a test SLURM ran")

    previous = signal.signal(signal.SIGTERM, terminated)
    try:
        cluster = start(root, min_memory_mb=min_memory_mb, min_cpus=min_cpus)
        try:
            yield cluster
        finally:
            stop(cluster)
    finally:
        signal.signal(signal.SIGTERM, previous)

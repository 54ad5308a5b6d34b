"""A one-node SLURM cluster on loopback, from Debian's packages (tools/setup-system.sh installs them):
munged, slurmctld and slurmd started as children of the test with their own slurm.conf, socket,
ports, state and logs under a temporary folder, and stopped by pid afterwards. Clients (sbatch,
squeue) find it through SLURM_CONF. Needs root, as CI runs (SlurmUser=root, munged as munge).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loopback import free_port

PROGRAMS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "sinfo", "srun")
# One partition is the cluster's default; the tests name the other in config (cluster.partition),
# so a job that lands there shows the config reached sbatch.
DEFAULT_PARTITION, PARTITION = "debug", "repro"


class SlurmUnavailable(RuntimeError):
    """The cluster cannot start here: the message says what is missing and how to install it."""


@dataclass
class Slurm:
    """A running cluster: its config file and the environment its clients need."""

    folder: Path
    conf: Path
    node: str

    def client_env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """`base` (a test's subprocess environment; this process's by default) as a client of
        this cluster: its config, and its srun first on the PATH (see write_srun)."""
        base = dict(os.environ) if base is None else base
        return {**base, "SLURM_CONF": str(self.conf),
                "PATH": f"{self.folder / 'bin'}{os.pathsep}{base.get('PATH', '')}"}

    def squeue(self, fields: str) -> list[list[str]]:
        """Every job slurmctld still holds (finished ones for MinJobAge), one list per job:
        squeue's `-o` format codes given in `fields`, e.g. "%i %k %P %T"."""
        proc = subprocess.run(["squeue", "-h", "-t", "all", "-o", fields.replace(" ", "|")],
                              env=self.client_env(), capture_output=True, text=True,
                              check=True)
        return [line.split("|") for line in proc.stdout.splitlines() if line.strip()]

    def log_tail(self, lines: int = 20) -> str:
        out = []
        for log in sorted((self.folder / "log").glob("*")):
            text = log.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"--- {log.name}\n" + "\n".join(text))
        return "\n".join(out)


def _memory_mb() -> int:
    """What slurmd will find (MemTotal), less a margin: a node declaring more is drained."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024 - 256
    raise SlurmUnavailable("no MemTotal in /proc/meminfo")


def write_conf(folder: Path, node: str, munge_socket: Path) -> Path:
    """slurm.conf for one node on 127.0.0.1: no accounting, no cgroups, its own ports and paths."""
    for sub in ("state", "spool", "log"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    conf = folder / "slurm.conf"
    conf.write_text("\n".join([
        "ClusterName=reprostack-test",
        f"SlurmctldHost={node}(127.0.0.1)",
        f"SlurmctldPort={free_port()}",
        f"SlurmdPort={free_port()}",
        "SlurmUser=root",
        "AuthType=auth/munge",
        "CredType=cred/munge",
        f"AuthInfo=socket={munge_socket}",
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core_Memory",
        "ReturnToService=2",
        "SchedulerType=sched/backfill",
        # Finished jobs stay visible to squeue (the status command without accounting) this long:
        # more than 3 times the executor's first status-check delay.
        "MinJobAge=300",
        "JobAcctGatherType=jobacct_gather/none",
        "AccountingStorageType=accounting_storage/none",
        "MpiDefault=none",
        f"StateSaveLocation={folder / 'state'}",
        f"SlurmdSpoolDir={folder / 'spool'}",
        f"SlurmctldPidFile={folder / 'slurmctld.pid'}",
        f"SlurmdPidFile={folder / 'slurmd.pid'}",
        f"SlurmctldLogFile={folder / 'log' / 'slurmctld.log'}",
        f"SlurmdLogFile={folder / 'log' / 'slurmd.log'}",
        f"NodeName={node} NodeAddr=127.0.0.1 CPUs={os.cpu_count()} RealMemory={_memory_mb()} "
        "State=UNKNOWN",
        f"PartitionName={DEFAULT_PARTITION} Nodes=ALL Default=YES MaxTime=INFINITE State=UP",
        f"PartitionName={PARTITION} Nodes=ALL Default=NO MaxTime=INFINITE State=UP",
    ]) + "\n")
    return conf


def _binary(name: str) -> str | None:
    """A SLURM or munge program: on the PATH, or in /usr/sbin where Debian puts the daemons."""
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")


def write_srun(folder: Path, conf: Path) -> Path:
    """bin/srun that names this cluster's config, then runs the real srun.

    The executor plugin's job step drops every SLURM_* variable but the job's identity before its
    nested `srun` (snakemake-executor-plugin-slurm-jobstep 0.6.1), SLURM_CONF too: srun then
    looks at the default /etc/slurm/slurm.conf, where a real cluster keeps it. This cluster's
    config lives in a temporary folder, so its srun (first on the PATH of the jobs, which inherit
    the submitter's environment) says where.
    """
    srun = folder / "bin" / "srun"
    srun.parent.mkdir(parents=True, exist_ok=True)
    srun.write_text(f'#!/bin/sh\nSLURM_CONF={conf} exec {_binary("srun")} "$@"\n')
    srun.chmod(0o755)
    return srun


def _munge_folder(stack: ExitStack) -> tuple[Path, Path]:
    """A socket folder with a fresh key, owned by the munge user as munged insists, in the system's
    temporary folder: munged must reach it, and pytest's tmp_path is private to root. Removed
    when `stack` closes."""
    munge = Path(tempfile.mkdtemp(prefix="reprostack-munge-"))
    stack.callback(shutil.rmtree, munge, ignore_errors=True)
    munge.chmod(0o755)
    key = munge / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    for path in (munge, key):
        shutil.chown(path, "munge", "munge")
    return munge, key


def _started(proc: subprocess.Popen[bytes], name: str, ready: Callable[[], bool], cluster: Slurm,
             timeout: float = 20) -> None:
    """Wait until `ready()` holds; a daemon that exits or never gets there fails with its logs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SlurmUnavailable(f"{name} exited ({proc.returncode}):\n{cluster.log_tail()}")
        if ready():
            return
        time.sleep(0.1)
    raise SlurmUnavailable(f"{name} not ready after {timeout:.0f} s:\n{cluster.log_tail()}")


def _spawn(stack: ExitStack, argv: list[str], out: Path, **kwargs: Any) -> subprocess.Popen[bytes]:
    """Start a daemon in the foreground (its pid is ours to stop), stopped when `stack` closes."""
    stderr = stack.enter_context(out.open("wb"))
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=stderr, **kwargs)
    stack.callback(_stop, proc)
    return proc


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def slurm_cluster(folder: Path) -> Iterator[Slurm]:
    """Start munged, slurmctld and slurmd for a one-node cluster under `folder` (as root); yield
    it once the node is idle; stop the three by pid afterwards. Raises SlurmUnavailable, naming
    what is missing, where it cannot start."""
    missing = [name for name in PROGRAMS if _binary(name) is None]
    if missing:
        raise SlurmUnavailable(f"{', '.join(missing)} not found: install slurmctld slurmd "
                               "slurm-client munge (bash tools/setup-system.sh)")
    if os.geteuid() != 0:
        raise SlurmUnavailable("starting slurmctld/slurmd needs root (SlurmUser=root), as in CI")
    folder.mkdir(parents=True, exist_ok=True)
    node = socket.gethostname()
    with ExitStack() as stack:
        munge, key = _munge_folder(stack)
        sock = munge / "munge.sock"
        cluster = Slurm(folder, write_conf(folder, node, sock), node)
        write_srun(folder, cluster.conf)
        env = cluster.client_env()
        log = folder / "log"
        munged = _spawn(stack, [str(_binary("munged")), "--foreground", f"--socket={sock}",
                                f"--key-file={key}", f"--log-file={munge / 'munged.log'}",
                                f"--pid-file={munge / 'munged.pid'}",
                                f"--seed-file={munge / 'munged.seed'}"],
                        log / "munged.out", user="munge", group="munge", extra_groups=[])
        _started(munged, "munged", sock.exists, cluster)
        ctld = _spawn(stack, [str(_binary("slurmctld")), "-D"], log / "slurmctld.out", env=env)

        def answers() -> bool:
            return subprocess.run(["sinfo", "-h"], env=env, capture_output=True).returncode == 0

        _started(ctld, "slurmctld", answers, cluster)
        slurmd = _spawn(stack, [str(_binary("slurmd")), "-D", "-N", node], log / "slurmd.out", env=env)

        def idle() -> bool:
            state = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], env=env, capture_output=True,
                                   text=True).stdout.split()
            return state[:1] == ["idle"]

        _started(slurmd, "slurmd", idle, cluster)
        yield cluster

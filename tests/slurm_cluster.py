"""A real single-node Slurm cluster for the tests, in a temporary directory.

``SlurmCluster(root).start()`` writes a ``slurm.conf`` for this host (its real CPU count, no
munge: ``AuthType=auth/none``, ``CredType=cred/none``, state and spool directories under
``root``, free ports), starts ``slurmctld`` and ``slurmd`` as daemons with pid files and waits
until ``sinfo`` shows the node idle; ``stop()`` ends both by their pid files. Clients find the
cluster through ``SLURM_CONF`` (:attr:`SlurmCluster.env`). Debian's ``slurm-wlm`` (22.05)
provides the daemons (``.ci/run`` installs it); the daemons run as the current user.
"""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

DAEMONS = ("slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "sinfo", "scancel", "scontrol", "srun")


def missing_programs() -> list[str]:
    """The Slurm programs this machine lacks (empty: a cluster can start here)."""
    found = {p: shutil.which(p) or (Path("/usr/sbin") / p).is_file() for p in DAEMONS + CLIENTS}
    return [p for p, ok in found.items() if not ok]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _daemon(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin") / name)


class SlurmCluster:
    def __init__(self, root: Path, partition: str = "promu") -> None:
        self.root = Path(root)
        self.partition = partition
        self.conf = self.root / "slurm.conf"
        self.host = socket.gethostname()

    @property
    def env(self) -> dict[str, str]:
        return {"SLURM_CONF": str(self.conf)}

    def pid_file(self, daemon: str) -> Path:
        return self.root / f"{daemon}.pid"

    def log(self, daemon: str) -> Path:
        return self.root / f"{daemon}.log"

    def write_conf(self) -> Path:
        user = getpass.getuser()
        for d in ("state", "spool"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        lines = [
            "ClusterName=promutest",
            f"SlurmctldHost={self.host}",
            f"SlurmUser={user}",
            f"SlurmdUser={user}",
            f"SlurmctldPort={_free_port()}",
            f"SlurmdPort={_free_port()}",
            "AuthType=auth/none",
            "CredType=cred/none",
            "MpiDefault=none",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_CPU",
            "ReturnToService=2",
            "SchedulerType=sched/backfill",
            "JobCompType=jobcomp/none",
            "AccountingStorageType=accounting_storage/none",
            "JobRequeue=1",
            "KillWait=2",  # scancel: SIGTERM, then SIGKILL 2 s later
            "MinJobAge=600",  # finished jobs stay visible to squeue/scontrol for the tests
            "InactiveLimit=0",
            f"StateSaveLocation={self.root / 'state'}",
            f"SlurmdSpoolDir={self.root / 'spool'}",
            f"SlurmctldPidFile={self.pid_file('slurmctld')}",
            f"SlurmdPidFile={self.pid_file('slurmd')}",
            f"SlurmctldLogFile={self.log('slurmctld')}",
            f"SlurmdLogFile={self.log('slurmd')}",
            f"NodeName={self.host} CPUs={os.cpu_count()} State=UNKNOWN",
            f"PartitionName={self.partition} Nodes={self.host} Default=YES MaxTime=INFINITE "
            "State=UP",
        ]
        self.conf.write_text("\n".join(lines) + "\n")
        return self.conf

    def _run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(
            cmd, env={**os.environ, **self.env}, capture_output=True, text=True, check=check,
            timeout=60,
        )  # fmt: skip

    def start(self, timeout: float = 60.0) -> SlurmCluster:
        self.write_conf()
        self._run(_daemon("slurmctld"), "-c", "-i")  # -c: no earlier state
        self._run(_daemon("slurmd"), "-c")
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            out = self._run("sinfo", "--noheader", "--format=%T", check=False).stdout.split()
            if out and out[0] == "idle":
                return self
            time.sleep(0.5)
        logs = "\n".join(
            f"--- {d}.log\n" + (self.log(d).read_text()[-2000:] if self.log(d).exists() else "")
            for d in DAEMONS
        )
        self.stop()
        raise RuntimeError(f"the test Slurm cluster did not come up in {timeout:.0f} s\n{logs}")

    def stop(self) -> None:
        """Cancel what is left in the queue, then end each daemon by its pid file (SIGTERM,
        SIGKILL after 10 s)."""
        if self.pid_file("slurmctld").is_file():
            self._run("scancel", f"--partition={self.partition}", check=False)
        for daemon in reversed(DAEMONS):
            path = self.pid_file(daemon)
            if not path.is_file():
                continue
            pid = int(path.read_text().strip() or 0)
            if pid <= 0:
                continue
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            t0 = time.monotonic()
            while time.monotonic() - t0 < 10:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.2)
            else:
                os.kill(pid, signal.SIGKILL)

    def job_info(self, job_id: str) -> dict[str, str]:
        """``scontrol show job``'s fields (StartTime, EndTime, JobState, Dependency, ...)."""
        out = self._run("scontrol", "--oneliner", "show", "job", job_id).stdout
        return dict(f.split("=", 1) for f in out.split() if "=" in f)

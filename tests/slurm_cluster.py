"""A real one-node SLURM cluster in a temporary folder, for the tests that submit jobs to it.

``munged``, ``slurmctld`` and ``slurmd`` (Debian's ``munge`` and ``slurm-wlm``) run in the
foreground as children of the test process, under ``nice -n 10`` (jobs inherit it), with a
``slurm.conf``, munge key and socket, spool, state and logs of their own, on free ports; nothing
outside the folder is touched and teardown stops exactly those processes. The node is this machine
(its CPUs and memory) with ``proctrack/linuxproc`` and ``task/none``, so no cgroups are needed.
Job ids start at a random number: Lightning's rendezvous port under SLURM is 15000 plus the id's last
four digits, so two clusters on one machine (test runs side by side) seldom pick the same ports.
``JobRequeue=1``; requeued jobs wait ``cred_expire`` (5 s here, SLURM's default 120 s) before
they run again; finished jobs stay visible to ``scontrol show job`` for an hour and are also
written to a job-completion log (``jobcomp.txt``).
"""

from __future__ import annotations

import os
import random
import re
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from helpers import free_port

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "scontrol", "scancel", "sinfo", "squeue", "srun")
FINISHED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"}


class ClusterUnavailable(RuntimeError):
    """The daemons could not be started here; the message says why."""


def _memory_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024 * 9 // 10
    return 1024


@dataclass
class SlurmCluster:
    root: Path
    cpus: int = field(default_factory=lambda: os.cpu_count() or 1)
    processes: list[subprocess.Popen] = field(default_factory=list)

    @property
    def conf(self) -> Path:
        return self.root / "slurm.conf"

    @property
    def env(self) -> dict[str, str]:
        """Variables that point SLURM's commands (and the jobs' own ``scontrol``) at this cluster."""
        return {"SLURM_CONF": str(self.conf)}

    def start(self, timeout: float = 90) -> SlurmCluster:
        missing = [name for name in DAEMONS + CLIENTS if shutil.which(name) is None]
        if missing:
            raise ClusterUnavailable(f"{', '.join(missing)} not found (apt-get install slurm-wlm munge)")
        for folder in ("state", "spool", "log", "munge"):
            (self.root / folder).mkdir(parents=True, exist_ok=True)
        key = self.root / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        socket_path = self.root / "munge" / "munge.socket"
        self._run_daemon(
            "munged",
            [
                "munged",
                "-F",
                "-f",
                f"--key-file={key}",
                f"--socket={socket_path}",
                f"--pid-file={self.root / 'munge' / 'munged.pid'}",
                f"--log-file={self.root / 'log' / 'munged.log'}",
                f"--seed-file={self.root / 'munge' / 'munged.seed'}",
            ],
        )
        self._wait(lambda: socket_path.exists(), 20, "munged did not create its socket")
        self.conf.write_text(self._config(socket_path))
        self._run_daemon("slurmctld", ["slurmctld", "-D", "-f", str(self.conf)])
        self._run_daemon("slurmd", ["slurmd", "-D", "-f", str(self.conf), "-N", "localhost"])
        self._wait(lambda: self.node_state() == "idle", timeout, "the node did not become idle")
        return self

    def _config(self, munge_socket: Path) -> str:
        root = self.root
        return f"""\
ClusterName=gemtest
FirstJobId={random.randrange(1000, 9000)}
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={munge_socket},cred_expire=5
StateSaveLocation={root / "state"}
SlurmdSpoolDir={root / "spool"}
SlurmctldPidFile={root / "slurmctld.pid"}
SlurmdPidFile={root / "slurmd.pid"}
SlurmctldLogFile={root / "log" / "slurmctld.log"}
SlurmdLogFile={root / "log" / "slurmd.log"}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc={root / "log" / "jobcomp.txt"}
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1,bf_interval=1
JobRequeue=1
MinJobAge=3600
ReturnToService=2
MpiDefault=none
KillWait=30
InactiveLimit=0
NodeName=localhost NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={_memory_mb()} State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
"""

    def _run_daemon(self, name: str, command: list[str]) -> None:
        log = (self.root / "log" / f"{name}.stdout").open("wb")
        self.processes.append(
            subprocess.Popen(
                ["nice", "-n", "10", *command], stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **self.env}, start_new_session=True
            )
        )

    def _wait(self, condition, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return
            dead = [p.args[3] for p in self.processes if p.poll() is not None]
            if dead:
                break
            time.sleep(0.5)
        raise ClusterUnavailable(f"{what}; {self.logs_tail()}")

    def logs_tail(self, lines: int = 15) -> str:
        parts = []
        for log in sorted((self.root / "log").glob("*")):
            text = log.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"--- {log.name}\n" + "\n".join(text))
        return "\n".join(parts)

    def stop(self) -> None:
        subprocess.run(
            ["scancel", "--full", "--signal=KILL", "--user", "root"], env={**os.environ, **self.env}, capture_output=True, timeout=30
        )
        deadline = time.monotonic() + 30  # let slurmd reap the job steps, or their slurmstepd outlive it
        while time.monotonic() < deadline and self._jobs_left():
            time.sleep(1)
        for process in reversed(self.processes):
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        self.processes.clear()

    def _jobs_left(self) -> bool:
        try:
            return bool(self.command(["squeue", "-h", "-o", "%i"]).stdout.strip())
        except (subprocess.SubprocessError, OSError):
            return False

    # Commands ---------------------------------------------------------------------------------

    def command(self, args: list[str], **kwargs) -> subprocess.CompletedProcess:
        kwargs.setdefault("env", {**os.environ, **self.env})
        return subprocess.run(args, capture_output=True, text=True, timeout=60, check=True, **kwargs)

    def node_state(self) -> str:
        try:
            return self.command(["sinfo", "-h", "-n", "localhost", "-o", "%T"]).stdout.strip()
        except (subprocess.SubprocessError, OSError):
            return ""

    def sbatch(self, args: list[str], env: dict[str, str], cwd: Path) -> int:
        result = self.command(["sbatch", "--parsable", *map(str, args)], env={**env, **self.env}, cwd=cwd)
        return int(result.stdout.strip().split(";")[0])

    def job(self, job_id: int) -> dict[str, str]:
        """``scontrol show job -o`` as a dict (JobState, Restarts, ExitCode, RunTime, ...)."""
        text = self.command(["scontrol", "show", "job", "-o", str(job_id)]).stdout
        return dict(re.findall(r"(\w[\w/:]*)=(\S*)", text))

    def wait_until(self, job_id: int, condition, timeout: float, what: str) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        info = self.job(job_id)
        while not condition(info):
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id}: {what} not reached within {timeout} s; last state {info}")
            time.sleep(0.5)
            info = self.job(job_id)
        return info

    def wait_finished(self, job_id: int, timeout: float) -> dict[str, str]:
        return self.wait_until(job_id, lambda info: info.get("JobState") in FINISHED, timeout, "a final state")

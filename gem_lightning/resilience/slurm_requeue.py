"""Requeueing a SLURM job: which signal asks for it, and ``scontrol requeue``.

Lightning's SLURM handler requeues from inside the signal handler; :class:`~gem_lightning.resilience.preemption.SaveOnSigterm`
requeues instead once every rank has saved, and uses these two functions for it.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess

from lightning.pytorch import Trainer
from lightning.pytorch.plugins.environments import SLURMEnvironment
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn


def requeue_signal(trainer: Trainer) -> int | None:
    """The signal that asks this SLURM job to requeue itself, when Lightning's auto-requeue is on."""
    environment = getattr(trainer.strategy, "cluster_environment", None)
    if isinstance(environment, SLURMEnvironment) and environment.auto_requeue and hasattr(signal, "SIGUSR1"):
        return environment.requeue_signal or signal.SIGUSR1
    return None


def requeue_slurm_job() -> None:
    """``scontrol requeue`` this job, as Lightning's SLURM signal handler does; failures are warnings."""
    job = _job_id()
    if not re.fullmatch(r"[0-9_]+", job):
        rank_zero_warn(f"Not requeueing: unexpected SLURM job id {job!r}.")
        return
    try:
        status = subprocess.call(["scontrol", "requeue", job])
    except FileNotFoundError:
        rank_zero_warn("Not requeueing: `scontrol` is not on PATH.")
        return
    if status == 0:
        rank_zero_info(f"Requeued SLURM job {job}.")
    else:
        rank_zero_warn(f"`scontrol requeue {job}` failed with status {status}.")


def _job_id() -> str:
    """This job's id; for a task of an array job, ``<array job>_<task>``, which requeues that task alone."""
    array_job = os.environ.get("SLURM_ARRAY_JOB_ID")
    if array_job:
        return f"{array_job}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ.get("SLURM_JOB_ID", "")

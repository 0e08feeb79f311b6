"""One trial: sample the settings, run ``fit`` through the command line in the trial's folder, return its score.

The fit is the one ``python main.py fit`` runs (the same configs, callbacks, checkpoints and reports),
with the sampled settings as command-line options and ``<study folder>/trial-<n>/`` for its outputs;
the ``tune`` command hands in the function that runs the command line (this package sits below it).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.utilities.exceptions import SIGTERMException

from gem_lightning.resilience import interrupted_by_ctrl_c
from gem_lightning.tuning import stopping
from gem_lightning.tuning.reporting import ReportToTrial
from gem_lightning.tuning.space import SearchSpace, command_line_value
from gem_lightning.tuning.trial_command import TrialCommand


class TrialStopped(Exception):
    """A signal stopped the trial's fit (its checkpoint saved): the trial fails and its settings are queued again."""


def worker_name(index: int) -> str:
    """Who ran a trial, for the trials table: host, process, worker index and SLURM job."""
    job = os.environ.get("SLURM_ARRAY_JOB_ID") or os.environ.get("SLURM_JOB_ID")
    task = os.environ.get("SLURM_ARRAY_TASK_ID")
    slurm = f" slurm {job}" + (f"_{task}" if task else "") if job else ""
    return f"{socket.gethostname()} pid {os.getpid()} worker {index}{slurm}"


def describe(values: dict[str, Any]) -> str:
    return ", ".join(f"{key}={command_line_value(value)}" for key, value in values.items())


@dataclass
class Objective:
    """The function Optuna optimises: ``trial`` -> the study's metric of one ``fit`` with the sampled settings.

    ``run_fit(args, callbacks)`` runs the command line with ``args`` (``fit ...``) and the extra trainer
    ``callbacks``, raising the user's mistakes, and returns the trainer.
    """

    run_fit: Callable[[list[str], list[Callback]], Trainer]
    space: SearchSpace
    command: TrialCommand
    metric: str
    direction: str
    study_dir: Path
    worker: str

    def __call__(self, trial: optuna.Trial) -> float:
        values = self.space.sample(trial)
        folder = self.study_dir / f"trial-{trial.number}"
        trial.set_user_attr("folder", str(folder))
        trial.set_user_attr("worker", self.worker)
        print(f"trial {trial.number}: {describe(values)}", flush=True)
        reporter = ReportToTrial(trial, self.metric, self.direction)
        try:
            trainer = self.run_fit(self.command.args(values, folder), [reporter])
        except SIGTERMException:  # the checkpoint is saved (SaveOnSigterm); this worker starts no further trial
            stopping.request("SIGINT" if interrupted_by_ctrl_c()[0] else "SIGTERM")
            raise TrialStopped(f"stopped by {stopping.requested()} after {len(reporter.values)} validations") from None
        if reporter.pruned:
            raise optuna.TrialPruned(f"after {len(reporter.values)} validations")
        return reporter.result(trainer)

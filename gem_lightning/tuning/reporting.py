"""The link between a trial's ``fit`` and its Optuna trial: :class:`ReportToTrial` (a Lightning callback).

After every validation it reports the study's metric to the trial; when the study's pruner says the
trial is behind the others at that point, it stops the fit there (Lightning's ``should_stop``: the
epoch's checkpoint is still written) and the trial ends as pruned. A metric the run does not log is
one line naming the metrics it does log, after the first validation, not a silent study of nothing.
"""

from __future__ import annotations

import math
import os
import signal
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from typing_extensions import override

from gem_lightning.errors import UserInputError
from gem_lightning.tuning import stopping


class ReportToTrial(Callback):
    """Report ``metric`` to ``trial`` (an ``optuna.Trial``) after each validation, and stop when it is pruned.

    Steps are validations, counted from 0 (comparable between trials that validate equally often).
    """

    def __init__(self, trial: Any, metric: str, direction: str) -> None:
        super().__init__()
        self.trial, self.metric, self.direction = trial, metric, direction
        self.values: list[float] = []
        self.pruned = False

    @override
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # A stop asked for while the trial was being set up reached only the worker's handler:
        # ask again, now that Lightning's handler listens, so the trial stops and saves as on SIGTERM.
        if stopping.requested() and not trainer.received_sigterm:
            os.kill(os.getpid(), signal.SIGTERM)

    @override
    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking:
            return
        value = self.read(trainer)
        self.values.append(value)
        self.trial.report(value, step=len(self.values) - 1)
        if self.trial.should_prune():
            self.pruned = True
            trainer.should_stop = True

    def read(self, trainer: Trainer) -> float:
        """The metric's current value; one line naming the logged metrics when the run does not log it."""
        metrics = trainer.callback_metrics
        if self.metric not in metrics:
            logged = ", ".join(sorted(metrics)) or "nothing yet"
            raise UserInputError(f"--tune.metric {self.metric!r} is not logged by this run; it logs: {logged}.")
        return float(metrics[self.metric])

    def result(self, trainer: Trainer) -> float:
        """The trial's value: the best validation value (the epoch a checkpoint on the metric keeps); the
        metric's final value for a run that never validates."""
        finite = [value for value in self.values if math.isfinite(value)]
        if finite:
            return max(finite) if self.direction == "maximize" else min(finite)
        return self.values[-1] if self.values else self.read(trainer)

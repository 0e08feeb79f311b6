"""A worker: runs trials of one study until the study has its trials, time runs out, or a signal stops it.

Any number of workers, in processes on one machine (``--tune.workers``) or tasks of a SLURM array,
work on the same study through its storage. Before each trial a worker counts the study's
finished and running trials (after failing the stale ones: :mod:`gem_lightning.tuning.storage`)
and starts one only if the study has fewer than it asked for, so the study ends with the number of
trials asked for (one more per extra worker at most, when workers start their last trials at the
same instant). Trials that failed do not count: their settings are queued again and run first.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import optuna
from optuna.trial import FrozenTrial, TrialState

from gem_lightning.tuning import stopping
from gem_lightning.tuning.objective import Objective, TrialStopped
from gem_lightning.tuning.study import best_trial

COUNTED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)


def run_worker(study: optuna.Study, objective: Objective, *, trials: int, deadline: float | None, retry: Callable) -> str:
    """Run trials of ``study`` until it has ``trials`` trials counted or ``deadline`` (``time.monotonic()``)
    passes; ``retry`` queues the settings of a trial a signal stopped. Returns why the worker stopped."""
    announce = Announcer(objective)
    with stopping.listening():
        while True:
            if stopping.requested():
                return f"stopped by {stopping.requested()}"
            if deadline is not None and time.monotonic() >= deadline:
                return "--tune.timeout reached"
            optuna.storages.fail_stale_trials(study)
            if len(study.get_trials(deepcopy=False, states=COUNTED)) >= trials:
                return f"the study has its {trials} trials"
            study.optimize(objective, n_trials=1, catch=(TrialStopped,), callbacks=[announce, requeue_stopped(retry)], gc_after_trial=True)


def requeue_stopped(retry: Callable) -> Callable[[optuna.Study, FrozenTrial], None]:
    """An Optuna callback that queues again the settings of a trial a signal stopped (it failed, not on its merits)."""

    def after_trial(study: optuna.Study, trial: FrozenTrial) -> None:
        if trial.state == TrialState.FAIL and stopping.requested():
            retry(study, trial)

    return after_trial


class Announcer:
    """An Optuna callback that prints one line per finished trial (Optuna's own log is turned down to errors);
    the objective printed its settings when it started."""

    def __init__(self, objective: Objective) -> None:
        self.objective = objective

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        steps = len(trial.intermediate_values)
        seconds = trial.duration.total_seconds() if trial.duration else 0.0
        if trial.state == TrialState.COMPLETE:
            outcome = f"{self.objective.metric} {trial.value:.4f}"
        elif trial.state == TrialState.PRUNED:
            outcome = f"pruned after {steps} validations"
        else:
            outcome = f"failed ({self._reason()})"
        best = best_trial(study)
        leader = f"; best so far: trial {best.number}, {best.value:.4f}" if best is not None else ""
        print(f"trial {trial.number}: {outcome} in {seconds:.0f} s{leader}", flush=True)

    def _reason(self) -> str:
        """Why a trial failed without raising: a signal stopped it (TrialStopped), or its value is not a number."""
        if stopping.requested():
            return f"stopped by {stopping.requested()}; its settings are queued again"
        return f"{self.objective.metric} is not a number"

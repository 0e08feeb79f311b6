"""The study: made on the first run, loaded by every later one (another worker, a resumed command).

A study remembers what it searches (the space, the metric and its direction, in its
``user_attrs``): a run that names the same study with another space or metric is refused in one
line, instead of mixing two searches into one history. TPE samples (seeded; each worker and each
resumed command from a seed of its own, and with ``constant_liar`` so that parallel workers do not
all try the same point), and the median rule prunes (a trial behind the median of earlier trials at the same validation, from
its second validation on).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy
import optuna
from optuna.exceptions import ExperimentalWarning
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from gem_lightning.errors import UserInputError
from gem_lightning.tuning.space import SearchSpace

SAMPLERS = ("tpe", "random")
PRUNERS = ("median", "none")


def make_sampler(name: str, seed: int, startup_trials: int) -> optuna.samplers.BaseSampler:
    """TPE (after ``startup_trials`` random ones) or random sampling, from ``seed``."""
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)  # constant_liar
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup_trials, constant_liar=True)


def sampler_seed(seed: int, worker: int, trials_so_far: int) -> int:
    """The sampler seed of worker ``worker`` in a command that finds ``trials_so_far`` trials in the study:
    each worker, and each command resuming the study, draws from a stream of its own (``seed`` alone
    again would replay the first command's random points, trial for trial)."""
    return int(numpy.random.SeedSequence([seed, worker, trials_so_far]).generate_state(1)[0])


def make_pruner(name: str, startup_trials: int) -> optuna.pruners.BasePruner:
    """The median rule once ``startup_trials`` trials have finished, from a trial's second validation on
    (the first is too noisy to judge a recipe by, warm-up schedules most of all), or no pruning."""
    if name == "none":
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=startup_trials, n_warmup_steps=1)


def open_study(
    storage: optuna.storages.BaseStorage,
    name: str,
    space: SearchSpace,
    metric: str,
    direction: str,
    *,
    sampler: Callable[[int], optuna.samplers.BaseSampler],
    pruner: optuna.pruners.BasePruner,
    where: str,
) -> optuna.Study:
    """The study ``name`` in ``storage`` (``where`` names it in messages), created if new; refused if it
    searches another space or metric than this run. ``sampler(n)`` makes its sampler once the study's
    trials are known (``n`` of them: :func:`sampler_seed`)."""
    study = optuna.create_study(storage=storage, study_name=name, direction=direction, pruner=pruner, load_if_exists=True)
    study.sampler = sampler(len(study.get_trials(deepcopy=False)))
    check_same_search(study, space, metric, direction, where)
    for key, value in (("space", space.fingerprint()), ("metric", metric), ("direction", direction)):
        if key not in study.user_attrs:
            study.set_user_attr(key, value)
    return study


def check_same_search(study: optuna.Study, space: SearchSpace, metric: str, direction: str, where: str) -> None:
    attrs = study.user_attrs
    again = "give another --tune.study name for a new search, or run it with its own settings to go on with it"
    if "space" not in attrs:
        if study.trials:
            raise UserInputError(f"study {study.study_name!r} in {where} was not made by `tune` (it has no search space): {again}.")
        return
    if attrs["space"] != space.fingerprint():
        difference = space.difference(attrs["space"])
        raise UserInputError(f"study {study.study_name!r} in {where} searches another space than {space.source} ({difference}): {again}.")
    if (attrs.get("metric"), study.direction.name.lower()) != (metric, direction):
        raise UserInputError(
            f"study {study.study_name!r} in {where} is to {study.direction.name.lower()} {attrs.get('metric')}, "
            f"not to {direction} {metric}: {again}."
        )


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    """The best completed trial, or None. Of trials that tie on the metric (an accuracy counts photos:
    ties are common), the one that took the least time: the same score for less training."""
    completed = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not completed:
        return None
    sign = 1 if study.direction == StudyDirection.MAXIMIZE else -1
    return max(completed, key=lambda trial: (sign * trial.value, -trial.duration.total_seconds(), -trial.number))

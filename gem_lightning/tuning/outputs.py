"""What a study leaves in its folder, rewritten whenever a ``tune`` command ends.

* ``best.yaml``: the best trial's settings as a config that ``fit`` stacks on the study's own
  (``--config <the study's config> --config best.yaml``);
* ``trials.csv``: one row per trial (state, value, validations, seconds, settings, the trial it retries,
  whether it is the config's own settings, who ran it, folder);
* ``history.png`` and ``importance.png``: Optuna's optimisation history and parameter importances
  (importance needs two completed trials that differ; with fewer the summary says so).

Every file is written whole or not at all (the tasks of a SLURM array may end at the same time).
"""

from __future__ import annotations

import csv
import io
import shlex
import warnings
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import optuna  # noqa: E402
import yaml  # noqa: E402
from matplotlib import pyplot  # noqa: E402
from optuna.trial import FrozenTrial, TrialState  # noqa: E402

from gem_lightning.files import atomic_write  # noqa: E402
from gem_lightning.tuning.space import SearchSpace, command_line_options, command_line_value, nested  # noqa: E402
from gem_lightning.tuning.study import best_trial  # noqa: E402

DPI = 110


def write_outputs(study: optuna.Study, space: SearchSpace, folder: Path, metric: str, fit_args: list[str]) -> list[str]:
    """Write the study's outputs to ``folder``; the summary lines to print."""
    trials = sorted(study.get_trials(deepcopy=False), key=lambda trial: trial.number)
    completed = [trial for trial in trials if trial.state == TrialState.COMPLETE]
    counts = ", ".join(f"{n} {state.name.lower()}" for state in TrialState if (n := sum(t.state == state for t in trials)))
    lines = [
        f"study {study.study_name!r}: {len(trials)} trials ({counts}){throughput(trials)}",
        f"trials table: {write_trials(trials, space, folder)}",
    ]
    if completed:
        best = best_trial(study)
        path = write_best(best, space, folder / "best.yaml", study.study_name, metric)
        lines += [
            f"best: trial {best.number}, {metric} {best.value:.4f}, {shlex.join(command_line_options(space.decode(best.params)))}",
            f"best settings: {path}; train them with: python main.py fit {shlex.join(fit_args)} --config {path}",
        ]
        lines += baseline_line(completed, best, metric)
        lines.append(f"history: {plot(optuna.visualization.matplotlib.plot_optimization_history, study, metric, folder / 'history.png')}")
    lines.append(f"importance: {plot_importance(study, completed, metric, folder / 'importance.png')}")
    return lines


def baseline_line(completed: list[FrozenTrial], best: FrozenTrial, metric: str) -> list[str]:
    """How far the best trial got from the config's own settings (``--tune.baseline``), when that trial completed."""
    baseline = next((trial for trial in completed if trial.user_attrs.get("baseline")), None)
    if baseline is None:
        return []
    gain = best.value - baseline.value
    return [f"baseline: trial {baseline.number} (the config's own settings), {metric} {baseline.value:.4f}; best - baseline: {gain:+.4f}"]


def throughput(trials: list[FrozenTrial]) -> str:
    """Finished trials an hour, from the first start to the last end (all workers together, pauses between runs included)."""
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED) and t.datetime_start and t.datetime_complete]
    if not finished:
        return ""
    hours = (max(t.datetime_complete for t in finished) - min(t.datetime_start for t in finished)).total_seconds() / 3600
    return f"; {len(finished)} finished in {hours * 60:.1f} min: {len(finished) / hours:.0f} trials/hour" if hours > 0 else ""


def write_trials(trials: list[FrozenTrial], space: SearchSpace, folder: Path) -> Path:
    """``trials.csv``: one row per trial."""
    path = folder / "trials.csv"
    keys = [param.key for param in space.params]
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(["number", "state", "value", "validations", "seconds", *keys, "retry_of", "baseline", "worker", "folder"])
    for trial in trials:
        values = space.decode(trial.params)
        writer.writerow(
            [
                trial.number,
                trial.state.name.lower(),
                "" if trial.value is None else trial.value,
                len(trial.intermediate_values),
                f"{trial.duration.total_seconds():.1f}" if trial.duration else "",
                *(command_line_value(values[key]) if key in values else "" for key in keys),
                trial.system_attrs.get("failed_trial", ""),
                "yes" if trial.user_attrs.get("baseline") else "",
                trial.user_attrs.get("worker", ""),
                trial.user_attrs.get("folder", ""),
            ]
        )
    with atomic_write(path, "w", what="the trials table", newline="", encoding="utf-8") as file:
        file.write(text.getvalue())
    return path


def write_best(best: FrozenTrial, space: SearchSpace, path: Path, study_name: str, metric: str) -> Path:
    """The best trial's settings as a config file ``fit --config`` reads."""
    header = (
        f"# The best settings of study {study_name!r}: trial {best.number}, {metric} {best.value:.4f}.\n"
        f"# Stack it on the study's config: python main.py fit --config <the study's config> --config {path.name}\n"
    )
    with atomic_write(path, "w", what="the best settings", encoding="utf-8") as file:
        file.write(header + yaml.safe_dump(nested(space.decode(best.params)), sort_keys=False))
    return path


def plot_importance(study: optuna.Study, completed: list[FrozenTrial], metric: str, path: Path) -> str:
    """Parameter importances, or why there are none (fewer than two completed trials, or no variation)."""
    if len(completed) < 2:
        return f"not computed: it needs 2 completed trials, the study has {len(completed)}"
    try:
        return str(plot(optuna.visualization.matplotlib.plot_param_importances, study, metric, path))
    except (ValueError, RuntimeError) as error:  # e.g. every completed trial sampled the same settings
        return f"not computed: {' '.join(str(error).split())}"


def plot(draw: Any, study: optuna.Study, metric: str, path: Path) -> Path:
    """``draw(study)`` (one of ``optuna.visualization.matplotlib``) saved as a PNG at ``path``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        axes = draw(study, target_name=metric)
    figure = axes.figure
    try:
        with atomic_write(path, "wb", what="the plot") as file:
            figure.savefig(file, dpi=DPI, format="png", bbox_inches="tight")
    finally:
        pyplot.close(figure)
    return path

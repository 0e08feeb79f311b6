"""``python main.py tune --config <x>.yaml --tune.space <space>.yaml``: search ``fit`` settings with Optuna.

Each trial is a ``fit`` with every option given here plus the settings the sampler picks from the
space file, in ``<out>/<study>/trial-<n>/``; trials that fall behind are pruned at validation. The
study lives in a SQLite file in its folder (or a PostgreSQL server, for many machines): the same
command resumes it, and several workers (``--tune.workers``, or the tasks of
``scripts/slurm_tune.sh``) share it. At the end: ``best.yaml`` (stack it on the config),
``trials.csv``, ``history.png``, ``importance.png``, and the command that opens the dashboard.
"""

from __future__ import annotations

import argparse
import os
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported when the command runs: `tune --help` and a missing Optuna need neither
    import optuna
    from lightning.pytorch import Trainer

    from gem_lightning.tuning.space import SearchSpace

DURATION = re.compile(r"^(?:(?P<h>\d+(?:\.\d+)?)h)?(?:(?P<m>\d+(?:\.\d+)?)m)?(?:(?P<s>\d+(?:\.\d+)?)s?)?$")


def parse_duration(text: str) -> float:
    """``2h``, ``90m``, ``1h30m``, ``45s`` or plain seconds -> seconds."""
    match = DURATION.match(text.strip())
    if not text.strip() or not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration: write e.g. 2h, 90m, 1h30m, 45s or 3600")
    return 3600 * float(match["h"] or 0) + 60 * float(match["m"] or 0) + float(match["s"] or 0)


def parse_boolean(text: str) -> bool:
    """``true``/``false`` (also yes/no, 1/0), as LightningCLI reads booleans."""
    value = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}.get(text.strip().lower())
    if value is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not true or false")
    return value


class OneLineErrors(argparse.ArgumentParser):
    """argparse whose mistakes are one ``error:`` line (a user error), without the usage text."""

    def error(self, message: str):
        from gem_lightning.errors import UserInputError

        raise UserInputError(f"{self.prog}: {message}")


def build_parser() -> argparse.ArgumentParser:
    from gem_lightning.training.metrics import MONITOR
    from gem_lightning.tuning.study import PRUNERS, SAMPLERS

    parser = OneLineErrors(
        prog="main.py tune",
        description=__doc__.split("\n\n")[0].replace("``", "`"),
        epilog="Every other option is a `fit` option (python main.py fit --help), given to every trial.",
    )
    add = parser.add_argument
    add(
        "--tune.space",
        dest="space",
        type=Path,
        required=True,
        help="YAML file: setting -> {log_uniform|uniform|int: [low, high]} or {choice: [...]}",
    )
    add("--tune.trials", dest="trials", type=int, default=20, help="finished trials the study should have (default: 20)")
    add("--tune.timeout", dest="timeout", type=parse_duration, default=None, help="start no trial after this long, e.g. 2h (default: none)")
    add("--tune.study", dest="study", default=None, help="study name (default: the space file's name without .yaml)")
    add(
        "--tune.storage",
        dest="storage",
        default=None,
        help="sqlite:///<path> or postgresql://user:password@host:port/db (default: sqlite in the study's folder)",
    )
    add("--tune.metric", dest="metric", default=MONITOR, help=f"what a trial scores, logged at validation (default: {MONITOR})")
    add(
        "--tune.direction",
        dest="direction",
        choices=("maximize", "minimize"),
        default=None,
        help="default: minimize a metric named *loss*, else maximize",
    )
    add("--tune.workers", dest="workers", type=int, default=1, help="worker processes on this machine, sharing the study (default: 1)")
    add("--tune.out", dest="out", type=Path, default=Path("runs/tune"), help="folder of the study folders (default: runs/tune)")
    add("--tune.sampler", dest="sampler", choices=SAMPLERS, default="tpe", help="tpe (default) or random")
    add("--tune.pruner", dest="pruner", choices=PRUNERS, default="median", help="median (default) or none")
    add(
        "--tune.startup_trials",
        dest="startup_trials",
        type=int,
        default=5,
        help="random trials before TPE, and finished trials before pruning (default: 5)",
    )
    add(
        "--tune.baseline",
        dest="baseline",
        type=parse_boolean,
        default=False,
        help="true: the first trial runs the config's own values of the searched settings, the point to beat (default: false)",
    )
    add(
        "--tune.seed",
        dest="seed",
        type=int,
        default=0,
        help="sampler seed; each worker and each resumed command draws from (seed, worker, trials so far) (default: 0)",
    )
    add(
        "--tune.heartbeat",
        dest="heartbeat",
        type=int,
        default=60,
        help="seconds between a running trial's heartbeats; a trial silent for twice that is failed and queued again (default: 60)",
    )
    add("--tune.worker_index", dest="worker_index", type=int, default=None, help=argparse.SUPPRESS)  # default: SLURM_ARRAY_TASK_ID or 0
    add("--tune.summary", dest="summary", type=parse_boolean, default=True, help=argparse.SUPPRESS)
    return parser  # fmt: skip


def run_fit(args: list[str], callbacks: list) -> Trainer:
    """A trial's ``fit``: the command line with ``args`` and the extra trainer ``callbacks``; its trainer."""
    from gem_lightning.cli.app import run_cli

    return run_cli(args, callbacks=callbacks).trainer


def main(argv: list[str]) -> int:
    """Run the study ``argv`` describes; the exit status (that of the worst worker)."""
    from gem_lightning.cli.app import parse_fit_options
    from gem_lightning.errors import UserInputError

    try:
        import optuna
    except ImportError:
        raise UserInputError("`tune` needs Optuna: pip install 'gem-lightning[tune]'") from None
    from gem_lightning.tuning.objective import Objective, worker_name
    from gem_lightning.tuning.outputs import write_outputs
    from gem_lightning.tuning.space import read_space
    from gem_lightning.tuning.storage import dashboard_command, default_storage, retry_callback
    from gem_lightning.tuning.trial_command import check_space
    from gem_lightning.tuning.worker import run_worker
    from gem_lightning.tuning.workers import run_local_workers

    options, fit_args = build_parser().parse_known_args(argv)
    for name in ("trials", "workers", "heartbeat"):
        if getattr(options, name) < 1:
            raise UserInputError(f"--tune.{name} must be at least 1; got {getattr(options, name)}.")
    space = read_space(options.space)
    fit = parse_fit_options(fit_args)  # a mistake in the fit options ends the command here, as it would end `fit`
    command = check_space(space, fit_args, fit.config, fit.parser)
    baseline = space.baseline(fit.config) if options.baseline else None
    options.study = options.study or options.space.stem
    study_dir = (options.out / options.study).resolve()
    options.storage = options.storage or default_storage(study_dir)
    options.direction = options.direction or ("minimize" if "loss" in options.metric.lower() else "maximize")
    index = options.worker_index if options.worker_index is not None else int(os.environ.get("SLURM_ARRAY_TASK_ID", 0))
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # one line per trial instead (tuning.worker.Announcer)
    study = open_the_study(options, space, index)
    if baseline and index == 0:  # one enqueuer: the tasks of an array start at the same instant
        study.enqueue_trial(baseline, user_attrs={"baseline": True}, skip_if_exists=True)
    if options.workers > 1:
        status = run_local_workers(argv, options.workers)
    else:
        objective = Objective(run_fit, space, command, options.metric, options.direction, study_dir, worker_name(index))
        deadline = time.monotonic() + options.timeout if options.timeout else None
        reason = run_worker(study, objective, trials=options.trials, deadline=deadline, retry=retry_callback())
        print(f"worker {index}: done, {reason}", flush=True)
        status = 0
    if options.summary:
        for line in [*write_outputs(study, space, study_dir, options.metric, fit_args), f"dashboard: {dashboard_command(options.storage)}"]:
            print(line, flush=True)
    return status


def open_the_study(options: argparse.Namespace, space: SearchSpace, index: int) -> optuna.Study:
    """The study the options name, made or loaded, with worker ``index``'s sampler; says which on stdout."""
    from gem_lightning.tuning.storage import open_storage, shown
    from gem_lightning.tuning.study import make_pruner, make_sampler, open_study, sampler_seed

    study = open_study(
        open_storage(options.storage, options.heartbeat),
        options.study,
        space,
        options.metric,
        options.direction,
        sampler=lambda trials: make_sampler(options.sampler, sampler_seed(options.seed, index, trials), options.startup_trials),
        pruner=make_pruner(options.pruner, options.startup_trials),
        where=shown(options.storage),
    )
    what = f"{options.direction} {options.metric} over {len(space.params)} settings of {space.source}"
    print(f"study {options.study!r} in {shown(options.storage)}: {what}", flush=True)
    return study

"""Trials an hour of ``main.py tune`` with 1 and 2 workers on one machine (prints figures; not a test).

Run from the repository root:

    python benchmarks/tune_workers.py [--trials 8] [--runs 1x1 2x1 2x1 1x1] [--keep runs/tune_workers]

Each run (``<workers>x<threads a worker>``) is one ``tune`` command, in a process of its own as a user
runs it, on a generated set (the procedural gems: 6 classes, 40 training photos each, 48 px) with a
tiny recipe (the quickstart's config, a two-block network, 32 px, 6 epochs, no loader workers) and a
search of the learning rate and weight decay only (every trial costs the same; no pruning). Reported:
the command's wall time (imports and the summary included), and finished trials an hour of the
study's own time (first trial's start to the last one's end, as the summary prints it).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO)]

from gem_lightning.data.tools.synthetic import generate_gem_dataset  # noqa: E402

SPACE = "model.optimizer.init_args.lr: {log_uniform: [1.0e-4, 1.0e-2]}\nmodel.optimizer.init_args.weight_decay: {uniform: [0.0, 0.1]}\n"
TINY = ["--config", str(REPO / "configs" / "quickstart.yaml"), "--data.generate", "null", "--data.image_size", "32",
        "--data.batch_size", "16", "--data.loader.num_workers", "0", "--model.network.init_args.channels", "[8, 16]",
        "--model.network.init_args.pools", "[max, max]", "--model.network.init_args.hidden_units", "16",
        "--trainer.max_epochs", "6", "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false",
        "--summary.max_depth", "0"]  # fmt: skip


def run(root: Path, data: Path, workers: int, threads: int, trials: int, number: int) -> dict:
    """One ``tune`` command (the ``number``-th run) with ``workers`` workers of ``threads`` threads each; its figures."""
    space = root / "space.yaml"
    space.write_text(SPACE)
    name = f"run{number}-{workers}x{threads}"
    command = [sys.executable, str(REPO / "main.py"), "tune", "--tune.space", str(space), "--tune.study", name, "--tune.out", str(root),
               "--tune.trials", str(trials), "--tune.workers", str(workers), "--tune.pruner", "none",
               *TINY, "--data.data_dir", str(data)]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONWARNINGS="ignore", GEM_LIGHTNING_CACHE=str(root / "cache"))
    start = time.perf_counter()
    result = subprocess.run(command, env=env, cwd=root, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"{name} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{root / name / 'study.db'}")
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    span = (max(t.datetime_complete for t in done) - min(t.datetime_start for t in done)).total_seconds()
    mean_trial = sum(t.duration.total_seconds() for t in done) / len(done)
    return {"run": name, "trials": len(done), "wall_s": wall, "span_s": span, "per_hour": 3600 * len(done) / span, "trial_s": mean_trial}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument(
        "--runs",
        nargs="+",
        default=["1x1", "2x1", "2x1", "1x1"],
        help="<workers>x<threads a worker>, in this order (ABBA: drifting load hits both)",
    )
    parser.add_argument("--keep", type=Path, default=None, help="folder for the studies and data (default: a temporary one)")
    options = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    with tempfile.TemporaryDirectory() as temporary:
        root = (options.keep or Path(temporary)).resolve()
        root.mkdir(parents=True, exist_ok=True)
        data = generate_gem_dataset(root / "gems", num_classes=6, train_per_class=40, test_per_class=4, image_size=48)
        print(f"{'run':<9} {'trials':>6} {'wall s':>7} {'study s':>8} {'trials/hour':>12} {'s a trial':>10}   load average")
        for number, spec in enumerate(options.runs):
            workers, threads = map(int, spec.split("x"))
            row = run(root, data, workers, threads, options.trials, number)
            figures = f"{row['trials']:>6} {row['wall_s']:>7.0f} {row['span_s']:>8.0f} {row['per_hour']:>12.0f} {row['trial_s']:>10.1f}"
            print(f"{row['run']:<9} {figures}   {os.getloadavg()[0]:.1f}", flush=True)


if __name__ == "__main__":
    main()

"""``python main.py seeds --config <x>.yaml --seeds 0 1 2``: train and test a config over several seeds.

With a few dozen photos a class, one run's test accuracy moves by points from seed to seed; the
mean and standard deviation over seeds is the figure to compare recipes by. Each seed trains with
every ``fit`` option given, then ``test`` scores the checkpoint that validation chose (best
``val/acc``; the last one when there is no validation split). The split of ``train/`` stays the same
(``data.seed``); only the training seed changes.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import time
from pathlib import Path

from gem_lightning.training.metrics import ACC, ACC_TOP5, F1

REPORTED = (f"test/{ACC}", f"test/{ACC_TOP5}", f"test/{F1}")


def run_seed(fit_args: list[str], seed: int) -> dict[str, float]:
    """Fit with ``seed``, test the checkpoint validation chose; returns the test metrics and wall time."""
    from gem_lightning.cli.app import cli_main

    start = time.perf_counter()
    cli = cli_main(["fit", *fit_args, "--seed_everything", str(seed)])
    fit_seconds = time.perf_counter() - start
    checkpoints = cli.trainer.checkpoint_callback
    chosen = checkpoints.best_model_path or checkpoints.last_model_path
    # A fresh `test` run, as a user would start it: the fitted trainer's weight-averaging callbacks
    # (EMA) would otherwise swap the checkpoint's weights for their own.
    tester = cli_main(["test", *fit_args, "--seed_everything", str(seed), "--ckpt_path", chosen])
    metrics = tester.trainer.callback_metrics
    return {"seed": seed, "fit_s": fit_seconds, "checkpoint": chosen, **{k: float(metrics[k]) for k in REPORTED}}


def summarize(rows: list[dict]) -> str:
    """One line per metric: mean +- standard deviation over the seeds (population std for one seed)."""
    lines = []
    for key in (*REPORTED, "fit_s"):
        values = [row[key] for row in rows]
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        scale, unit = (1, " s") if key == "fit_s" else (100, "%")
        lines.append(f"{key:<14} {statistics.mean(values) * scale:8.2f} +- {std * scale:.2f}{unit}   (n={len(values)})")
    return "\n".join(lines)


def read_rows(path: Path) -> dict[int, dict]:
    """Per-seed rows an earlier run wrote to ``path`` (none if it does not exist), by seed."""
    if not path.exists():
        return {}
    with path.open(newline="") as file:
        rows = list(csv.DictReader(file))
    numeric = ("fit_s", *REPORTED)
    return {int(row["seed"]): {**row, "seed": int(row["seed"]), **{k: float(row[k]) for k in numeric}} for row in rows}


def write_rows(path: Path, rows: list[dict]) -> None:
    with path.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def main(argv: list[str]) -> list[dict]:
    parser = argparse.ArgumentParser(prog="main.py seeds", description=__doc__.splitlines()[0], add_help=False)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--out", type=Path, default=None,
        help="CSV of the per-seed results, written after each seed; seeds already in it are not trained "
        "again, so the same command resumes an interrupted run (default: seeds.csv in the first seed's "
        "run folder, so no earlier results are overwritten)",
    )  # fmt: skip
    options, fit_args = parser.parse_known_args(argv)
    out = options.out
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)  # before hours of training, not after
    done = read_rows(out) if out else {}
    for seed in options.seeds:
        if seed in done:
            print(f"seed {seed}: already in {out}; not trained again")
            continue
        done[seed] = run_seed(fit_args, seed)
        out = out or Path(done[seed]["checkpoint"]).parents[1] / "seeds.csv"
        write_rows(out, list(done.values()))
    rows = [done[seed] for seed in options.seeds]
    print(f"\nTest metrics over seeds {options.seeds} (per-seed rows in {out}):\n{summarize(rows)}")
    return rows

"""What starting loader workers from a forkserver costs against forking the trainer: whole ``fit`` runs.

Run from the repository root:

    python benchmarks/worker_start.py [--rounds 2] [--epochs 1] [--ddp] [--config configs/quickstart.yaml]

Each round runs ``main.py fit`` once with ``--data.loader.multiprocessing_context fork`` and once with
``forkserver`` (the default), alternating which goes first, in fresh processes (the forkserver's
start and imports included); prints each run's wall time, the medians and their ratio. ``--ddp``
trains on 2 CPU processes (one forkserver per rank). The embedded dataset is generated into
``runs/bench_worker_start/data`` on the first run.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
METHODS = ("fork", "forkserver")


def fit_seconds(method: str, args: argparse.Namespace, out: Path) -> float:
    command = [
        sys.executable, str(REPO / "main.py"), "fit", "--config", args.config,
        "--data.data_dir", str(out / "data"), "--data.loader.multiprocessing_context", method,
        "--trainer.max_epochs", str(args.epochs), "--trainer.enable_progress_bar", "false",
        "--trainer.logger.init_args.save_dir", str(out / "runs"),
    ]  # fmt: skip
    if args.ddp:
        command += ["--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp"]
    start = time.perf_counter()
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"fit with {method} failed:\n{result.stderr[-3000:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--ddp", action="store_true", help="2 CPU processes (DDP)")
    parser.add_argument("--config", default="configs/quickstart.yaml")
    args = parser.parse_args()
    out = REPO / "runs" / "bench_worker_start"
    fit_seconds("fork", argparse.Namespace(**{**vars(args), "epochs": 1, "ddp": False}), out)  # data generated, cache warm
    times: dict[str, list[float]] = {method: [] for method in METHODS}
    for round_ in range(args.rounds):
        for method in METHODS if round_ % 2 == 0 else METHODS[::-1]:
            times[method].append(fit_seconds(method, args, out))
            print(f"round {round_}: {method:10s} {times[method][-1]:6.1f} s", flush=True)
    medians = {method: statistics.median(values) for method, values in times.items()}
    print(
        f"median fit wall time: fork {medians['fork']:.1f} s, forkserver {medians['forkserver']:.1f} s; "
        f"forkserver / fork = {medians['forkserver'] / medians['fork']:.2f}"
    )


if __name__ == "__main__":
    main()

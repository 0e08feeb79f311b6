"""``python main.py lr_find --config <x>.yaml``: Lightning's learning-rate range test on your data.

Trains briefly with an exponentially rising learning rate and suggests the rate where the loss
falls fastest; prints the suggestion and saves the loss-vs-LR plot. Every ``fit`` option applies.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

from lightning.pytorch.tuner import Tuner  # noqa: E402


def main(argv: list[str]) -> float | None:
    """Run the range test with ``argv`` as ``fit`` options; returns the suggested learning rate."""
    from gem_lightning.cli.app import cli_main

    parser = argparse.ArgumentParser(prog="main.py lr_find", description=__doc__.splitlines()[0], add_help=False)
    parser.add_argument("--min_lr", type=float, default=1e-6)
    parser.add_argument("--max_lr", type=float, default=1.0)
    parser.add_argument("--num_training", type=int, default=100, help="steps of the range test")
    parser.add_argument("--plot", type=Path, default=None, help="where to save the plot (default: the run folder)")
    options, fit_args = parser.parse_known_args(argv)
    cli = cli_main(fit_args, run=False)
    finder = Tuner(cli.trainer).lr_find(
        cli.model,
        datamodule=cli.datamodule,
        min_lr=options.min_lr,
        max_lr=options.max_lr,
        num_training=options.num_training,
        update_attr=False,
    )
    suggestion = finder.suggestion() if finder is not None else None
    if cli.trainer.is_global_zero and finder is not None:
        plot = options.plot or Path(cli.trainer.log_dir or ".") / "lr_find.png"
        plot.parent.mkdir(parents=True, exist_ok=True)
        finder.plot(suggest=True).savefig(plot, dpi=120)
        print(f"Suggested learning rate: {suggestion:.3g} (plot: {plot})")
        print(f"Use it with: --model.optimizer.init_args.lr {suggestion:.3g}")
    return suggestion

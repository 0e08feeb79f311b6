"""``python main.py preview --config <x>.yaml [--out DIR]``: write the augmentation previews, train nothing.

The drawing is :func:`gem_lightning.reports.preview.augmentation_preview`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from gem_lightning.reports.preview import augmentation_preview


def main(argv: list[str]) -> list[Path]:
    """Set up the data module from ``argv`` (``fit`` options) and write the previews; returns their paths."""
    from gem_lightning.cli.app import cli_main

    parser = argparse.ArgumentParser(prog="main.py preview", add_help=False)
    parser.add_argument("--out", type=Path, default=None, help="folder for the images (default: the run folder)")
    options, fit_args = parser.parse_known_args(argv)
    cli = cli_main(fit_args, run=False)
    cli.datamodule.prepare_data()
    cli.datamodule.setup("fit")
    written = augmentation_preview(cli.datamodule, options.out or Path(cli.trainer.log_dir or "."))
    for path in written:
        print(f"Wrote {path}")
    return written

"""``python main.py ensemble A.ckpt B.ckpt C.ckpt --output ensemble.ckpt``: several trained models as one.

The ensemble checkpoint averages its members' (calibrated) class probabilities; ``test``,
``predict``, ``serve``, ``export`` and ``gem_lightning.inference.api.load_model`` take it as they take
one model. Members must share their classes, image size and preprocessing.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from gem_lightning.tracking.checkpoint_uri import resolve_checkpoint
from gem_lightning.training.combine import ensemble_checkpoint, save_checkpoint


def main(argv: Sequence[str]) -> Path:
    parser = argparse.ArgumentParser(prog="main.py ensemble", description=__doc__.splitlines()[0])
    parser.add_argument(
        "checkpoints", nargs="+", help="two or more trained .ckpt files with the same classes (or runs:/..., models:/... from MLflow)"
    )
    parser.add_argument("--output", type=Path, required=True, help="the ensemble checkpoint to write (not overwritten)")
    parser.add_argument(
        "--tta",
        choices=("none", "hflip", "dihedral"),
        default=None,
        help="test-time augmentation of the ensemble (default: the members' own when they agree)",
    )
    options = parser.parse_args(argv)
    members = [resolve_checkpoint(checkpoint) for checkpoint in options.checkpoints]
    path = save_checkpoint(ensemble_checkpoint(members, tta=options.tta), options.output)
    print(
        f"Wrote an ensemble of {len(options.checkpoints)} checkpoints to {path}; use it as any checkpoint: "
        f"python main.py test --ckpt_path {path} --data.data_dir <folder>"
    )
    return path

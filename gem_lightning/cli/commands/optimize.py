"""``python main.py optimize --data_dir photos/ --output <path or s3://bucket/prefix>``: a folder-per-class
set -> a stream that ``fit``, ``validate``, ``test`` and ``predict`` read with ``--data.data_dir <output>``.

The work is :func:`gem_lightning.data.tools.optimize.optimize_dataset`.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from gem_lightning.errors import UserInputError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="main.py optimize",
        description="Turn a folder-per-class dataset (<data_dir>/train/<Class>/, optional test/) into a LitData "
        "stream at a local path or s3://bucket/prefix, split into train/val/test, for datasets too large to scan "
        "and decode on every machine before training. Reports unusable files as fit does.",
    )
    parser.add_argument("--data_dir", required=True, type=Path, help="the dataset folder, or a labels file (.csv: multi-label)")
    parser.add_argument("--output", required=True, help="a new local folder or s3://bucket/prefix")
    parser.add_argument("--image_size", type=int, default=220, help="the side models will train at (default 220)")
    parser.add_argument(
        "--format",
        choices=("resized", "encoded"),
        default="resized",
        help="resized: uint8 pixels, no decoding per epoch, fixed size; encoded: the original bytes, "
        "decoded each epoch, any size later (default resized)",
    )
    parser.add_argument("--autocrop", action="store_true", help="crop each photo to the subject before resizing")
    parser.add_argument("--val_fraction", type=float, default=0.2, help="share of each class of train/ held out (default 0.2)")
    parser.add_argument("--seed", type=int, default=42, help="seed of the train/validation split (default 42)")
    parser.add_argument("--chunk_bytes", default="64MB", help="size of each chunk file (default 64MB: few requests to an object store)")
    parser.add_argument("--num_workers", type=int, default=os.cpu_count() or 1, help="parallel writer processes (default: one per core)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (0, or 2 for a user mistake)."""
    from gem_lightning.data.tools.optimize import optimize_dataset

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        info = optimize_dataset(
            args.data_dir,
            args.output,
            image_size=args.image_size,
            image_format=args.format,
            autocrop=args.autocrop,
            val_fraction=args.val_fraction,
            seed=args.seed,
            num_workers=args.num_workers,
            chunk_bytes=args.chunk_bytes,
        )
    except UserInputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    counts = ", ".join(f"{split} {count}" for split, count in info.counts.items())
    print(
        f"Wrote a stream of {len(info.class_names)} classes to {args.output} ({counts}; {info.image_format}, "
        f"{info.decode.size} px). Train on it with --data.data_dir {args.output}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

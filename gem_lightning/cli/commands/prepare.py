"""``python main.py prepare --source photos/ --output data/gems``: one folder per class -> ``train/`` + ``test/``.

The split itself is :func:`gem_lightning.data.tools.prepare.prepare_dataset`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from gem_lightning.data.tools.prepare import MODES, prepare_dataset


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog or "main.py prepare",
        description="Split a folder-per-class collection (<source>/<Class>/<images>) into "
        "<output>/train/<Class>/ and <output>/test/<Class>/, per class, reproducibly, keeping identical "
        "files on one side and leaving out files that are not usable images.",
    )
    parser.add_argument("--source", required=True, type=Path, help="folder of class folders")
    parser.add_argument("--output", required=True, type=Path, help="new folder to write train/ and test/ into")
    parser.add_argument("--test-fraction", type=float, default=0.1, help="share of each class for test/ (default 0.1)")
    parser.add_argument("--seed", type=int, default=42, help="seed of the split (default 42)")
    parser.add_argument("--mode", choices=MODES, default="copy", help="copy files, hard-link or symlink them (default copy)")
    return parser


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """Command-line entry point; returns the exit status (0, or 2 for a user mistake)."""
    args = build_parser(prog).parse_args(argv)
    try:
        result = prepare_dataset(args.source, args.output, test_fraction=args.test_fraction, seed=args.seed, mode=args.mode)
    except (ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(result.summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())

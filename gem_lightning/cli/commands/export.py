"""``python main.py export CKPT --out DIR --formats torchscript onnx``: TorchScript / ONNX files.

The export itself is :func:`gem_lightning.inference.export.export_checkpoint`.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from gem_lightning.inference.export import FORMATS, export_checkpoint


def main(argv: Sequence[str] | None = None) -> int:
    """Export a checkpoint; returns the exit status (argparse exits with 2 on a user mistake)."""
    parser = argparse.ArgumentParser(
        prog="main.py export",
        description="Export a trained checkpoint for use without Lightning (or Python): TorchScript and ONNX.",
    )
    parser.add_argument("checkpoint", type=Path, help="a .ckpt file written by training")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: export/ next to the checkpoint)")
    parser.add_argument("--formats", nargs="+", choices=FORMATS, default=list(FORMATS), help="what to export (default: all)")
    args = parser.parse_args(argv)
    if not args.checkpoint.is_file():
        parser.error(f"checkpoint {str(args.checkpoint)!r} does not exist")
    try:
        written = export_checkpoint(args.checkpoint, args.out or args.checkpoint.parent / "export", args.formats)
    except ImportError as error:
        parser.error(str(error))
    for kind, path in written.items():
        print(f"{kind}: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

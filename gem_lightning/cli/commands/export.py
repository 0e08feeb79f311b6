"""``python main.py export CKPT --out DIR --formats torchscript onnx``: TorchScript / ONNX files.

The export itself is :func:`gem_lightning.inference.export.export_checkpoint`.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from gem_lightning.inference.export import FORMATS, export_checkpoint
from gem_lightning.tracking.checkpoint_uri import is_store_uri, resolve_checkpoint


def main(argv: Sequence[str] | None = None) -> int:
    """Export a checkpoint; returns the exit status (argparse exits with 2 on a user mistake)."""
    parser = argparse.ArgumentParser(
        prog="main.py export",
        description="Export a trained checkpoint for use without Lightning (or Python): TorchScript and ONNX.",
    )
    parser.add_argument(
        "checkpoint", help="a .ckpt file written by training, or one kept by MLflow: runs:/<run id>/<path>, models:/<name>/<version>"
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="output folder (default: export/ next to the checkpoint; for one kept by MLflow, ./export)"
    )
    parser.add_argument("--formats", nargs="+", choices=FORMATS, default=list(FORMATS), help="what to export (default: all)")
    args = parser.parse_args(argv)
    checkpoint = Path(resolve_checkpoint(args.checkpoint))
    if not checkpoint.is_file():
        parser.error(f"checkpoint {args.checkpoint!r} does not exist")
    out = args.out or (Path("export") if is_store_uri(args.checkpoint) else checkpoint.parent / "export")
    try:
        written = export_checkpoint(checkpoint, out, args.formats)
    except ImportError as error:
        parser.error(str(error))
    for kind, path in written.items():
        print(f"{kind}: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

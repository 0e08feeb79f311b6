"""Class imbalance: macro-F1 on `test/` with and without ``model.class_weights: balanced``, on an imbalanced subset.

Run from the repository root (prints figures; not a test):

    python benchmarks/imbalance.py [--data-dir ../shared/datasets/gemstones] [--fewest 5] [--most 35] [--seed 0] \
        [-- <fit options, e.g. --data.image_size 160 --trainer.max_epochs 8>]

The subset keeps, for each class, between ``--fewest`` and ``--most`` of its `train/` photos (evenly
spread over the classes in a random order drawn with ``--seed``), as symbolic links in a temporary
folder; `test/` stays whole, so every class is scored on the same photos. Both runs train
``configs/gemstones_finetune.yaml`` (with the options after ``--``) with the same seed.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]

from train_throughput import hidden_output, quiet  # noqa: E402

from gem_lightning.cli.app import cli_main  # noqa: E402

CONFIG = REPO / "configs" / "gemstones_finetune.yaml"


def imbalanced_copy(source: Path, target: Path, fewest: int, most: int, seed: int) -> dict[str, int]:
    """Symbolic links to an imbalanced share of ``source/train`` (and all of ``source/test``) under ``target``."""
    classes = sorted(p.name for p in (source / "train").iterdir() if p.is_dir())
    order = random.Random(seed).sample(classes, len(classes))
    kept = {name: round(fewest + (most - fewest) * rank / max(1, len(classes) - 1)) for rank, name in enumerate(order)}
    for name in classes:
        photos = sorted(p for p in (source / "train" / name).iterdir() if p.is_file())
        link_photos(random.Random(f"{seed}/{name}").sample(photos, min(kept[name], len(photos))), target / "train" / name)
    for folder in (source / "test").iterdir():
        if folder.is_dir():
            link_photos(sorted(p for p in folder.iterdir() if p.is_file()), target / "test" / folder.name)
    return kept


def link_photos(photos: list[Path], folder: Path) -> None:
    folder.mkdir(parents=True)
    for photo in photos:
        (folder / photo.name).symlink_to(photo.resolve())


def fit_and_test(data_dir: Path, root: str, seed: int, extra: list[str]) -> dict[str, float]:
    common = [
        "--config",
        str(CONFIG),
        "--data.data_dir",
        str(data_dir),
        *extra,
        "--trainer.logger.init_args.save_dir",
        root,
        "--trainer.enable_progress_bar",
        "false",
        "--seed_everything",
        str(seed),
    ]
    with hidden_output():
        fitted = cli_main(["fit", *common, "--checkpoint.dirpath", f"{root}/checkpoints"])
        tested = cli_main(["test", *common, "--ckpt_path", fitted.trainer.checkpoint_callback.last_model_path])
    return {key: float(value) for key, value in tested.trainer.callback_metrics.items() if key.startswith("test/")}


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    ours, fit_options = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "datasets" / "gemstones")
    parser.add_argument("--fewest", type=int, default=5)
    parser.add_argument("--most", type=int, default=35)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(ours)
    quiet()
    with tempfile.TemporaryDirectory() as folder:
        kept = imbalanced_copy(args.data_dir, Path(folder) / "data", args.fewest, args.most, args.seed)
        print(
            f"train/: {sum(kept.values())} photos, {min(kept.values())} to {max(kept.values())} a class; {' '.join(fit_options)}",
            flush=True,
        )
        for weights in ("none", "balanced"):
            metrics = fit_and_test(
                Path(folder) / "data", f"{folder}/{weights}", args.seed, [*fit_options, "--model.class_weights", weights]
            )
            print(
                f"class_weights {weights}: test macro-F1 {metrics['test/f1']:.2%}, top-1 {metrics['test/acc']:.2%}, "
                f"top-5 {metrics['test/acc_top5']:.2%}",
                flush=True,
            )


if __name__ == "__main__":
    main()

"""Augmentation policies on the gemstones fine-tune: top-1 on `test/` with each policy against the current augmentation.

Run from the repository root (prints a Markdown table, one row as each run ends; not a test):

    python benchmarks/augment_policies.py [--data-dir ../shared/datasets/gemstones] [--seed 0] \
        [--variants current,randaugment,trivialaugment,autoaugment,augmix,erasing] [-- <fit options>]

Each variant fits ``configs/gemstones_finetune.yaml`` once, with the same seed, at 160 px (the options
after ``--`` replace ``--data.image_size 160``), and tests its last checkpoint on `test/` with the
config's dihedral TTA. ``current`` is the config's own augmentation; the others add to it one
``data.augment.policy`` (RandAugment, TrivialAugmentWide, AutoAugment's ImageNet policy, AugMix: their
photometric operations, default strengths) or random erasing (``data.augment.erasing 0.25``).
Each row gives the ``fit`` command of its run (then ``test`` with ``--ckpt_path <its last.ckpt>``).
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]

from imbalance import CONFIG, fit_and_test  # noqa: E402
from train_throughput import quiet  # noqa: E402

VARIANTS: dict[str, list[str]] = {
    "current": [],
    "randaugment": ["--data.augment.policy", "randaugment"],
    "trivialaugment": ["--data.augment.policy", "trivialaugment"],
    "autoaugment": ["--data.augment.policy", "autoaugment"],
    "augmix": ["--data.augment.policy", "augmix"],
    "erasing": ["--data.augment.erasing", "0.25"],
}
DEFAULT_FIT_OPTIONS = ["--data.image_size", "160"]


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    ours, fit_options = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, DEFAULT_FIT_OPTIONS)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "datasets" / "gemstones")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of: {', '.join(VARIANTS)}")
    args = parser.parse_args(ours)
    variants = [name for name in args.variants.split(",") if name]
    unknown = [name for name in variants if name not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}")
    quiet()
    print(f"{CONFIG.relative_to(REPO)}, seed {args.seed}, {' '.join(fit_options)}; data {args.data_dir}\n", flush=True)
    print("| variant | top-1 | top-5 | minutes | command |\n|---|---:|---:|---:|---|", flush=True)
    with tempfile.TemporaryDirectory() as folder:
        for name in variants:
            options = [*fit_options, *VARIANTS[name]]
            start = time.perf_counter()
            metrics = fit_and_test(args.data_dir, f"{folder}/{name}", args.seed, options)
            fit = ["--config", str(CONFIG.relative_to(REPO)), "--data.data_dir", str(args.data_dir), "--seed_everything", str(args.seed)]
            command = shlex.join(["python", "main.py", "fit", *fit, *options])
            print(
                f"| {name} | {metrics['test/acc']:.2%} | {metrics['test/acc_top5']:.2%} | {(time.perf_counter() - start) / 60:.1f} "
                f"| `{command}` |",
                flush=True,
            )


if __name__ == "__main__":
    main()

"""Fine-tuning throughput: ``configs/gemstones_finetune.yaml`` through the CLI vs a plain PyTorch loop.

Run from the repository root (prints figures; not a test):

    python benchmarks/finetune_throughput.py [--data-dir ../shared/datasets/gemstones] [--steps 10] [--rounds 2]

Both train the same network (timm ``tf_efficientnet_lite0`` from the shipped ImageNet weights, its
frozen stages and drop rates as the config says) on the same loader (the config's data module: photos
at the config's size from the warm decode cache, the config's augmentation), at the config's precision:
(a_ft) a hand-written loop: forward, label-smoothed cross-entropy, AdamW over the backbone and head
groups; (c_ft) the CLI's own trainer (its callbacks and logger included), as
``fit`` runs it. Variants alternate within each round, in reversed order every other round.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]

from train_throughput import Run, StepClock, hidden_output, quiet  # noqa: E402

from gem_lightning.cli.app import cli_main  # noqa: E402

CONFIG = REPO / "configs" / "gemstones_finetune.yaml"


def build_cli(args, root: str):
    """The recipe as ``fit`` builds it, stopped after the timed steps."""
    return cli_main(
        [
            "--config", str(CONFIG), "--data.data_dir", str(args.data_dir),
            "--trainer.max_steps", str(args.warmup + args.steps), "--trainer.limit_val_batches", "0",
            "--trainer.num_sanity_val_steps", "0", "--trainer.default_root_dir", root,
            "--trainer.logger.init_args.save_dir", root, "--checkpoint.dirpath", root,
        ],
        run=False,
    )  # fmt: skip


def run_plain(args) -> Run:
    """(a_ft): the same module, loader and optimizer groups, in a hand-written loop."""
    with tempfile.TemporaryDirectory() as root, hidden_output():
        cli = build_cli(args, root)
    datamodule, model = cli.datamodule, cli.model
    datamodule.prepare_data()
    datamodule.setup("fit")
    optimizer = model.optimizer(model.parameter_groups())  # the config's AdamW over the backbone and head groups
    optimizer.param_groups[0]["lr"] *= model.hparams.backbone_lr_ratio
    mixed = cli.trainer.precision == "bf16-mixed"
    model.train()
    run = Run(args.warmup, args.warmup + args.steps, begin=time.perf_counter())
    for images, targets, _ in datamodule.train_dataloader():
        run.step_start()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=mixed):
            loss = F.cross_entropy(model(images).float(), targets, label_smoothing=model.hparams.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        run.step_end(len(images))
        if len(run.ends) == run.total:
            break
    return run


def run_cli(args) -> Run:
    """(c_ft): the recipe's own trainer."""
    clock = StepClock(args)
    with tempfile.TemporaryDirectory() as root, hidden_output():
        cli = build_cli(args, root)
        cli.trainer.callbacks.append(clock)
        cli.trainer.fit(cli.model, cli.datamodule)
    return clock.run


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "datasets" / "gemstones")
    parser.add_argument("--steps", type=int, default=10, help="timed training steps per run")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps before each timed run")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    args.device = "cpu"
    quiet()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; {CONFIG.name}; "
        f"{args.steps} steps after {args.warmup} warm-up, {args.rounds} rounds"
    )
    runners = {"a_ft": lambda: run_plain(args), "c_ft": lambda: run_cli(args)}
    results: dict[str, list[dict[str, float]]] = {label: [] for label in runners}
    for round_ in range(args.rounds):
        for label in runners if round_ % 2 == 0 else list(runners)[::-1]:
            stats = runners[label]().stats(args.warmup)
            results[label].append(stats)
            print(f"round {round_ + 1} {label}: {stats['mean']:.1f} images/s (median step {stats['median']:.1f}), "
                  f"waiting {stats['wait']:.1%}, other processes {stats['others']:.2f} cores", flush=True)  # fmt: skip
    for key in ("mean", "median"):
        plain, cli = (statistics.median(r[key] for r in results[label]) for label in runners)
        print(f"median {key} images/s: a_ft {plain:.1f}, c_ft {cli:.1f}; c_ft/a_ft {cli / plain:.3f}")


if __name__ == "__main__":
    main()

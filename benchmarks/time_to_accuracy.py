"""Time to accuracy (the DAWNBench measure): training seconds until `test/` top-1 reaches 70 / 75 / 80 %.

Run from the repository root (prints figures; not a test):

    python benchmarks/time_to_accuracy.py [--data-dir ../shared/datasets/gemstones] [--variants cli plain] [--tta none] \
        [--keep runs/tta_cli] \
        [-- <fit options, e.g. --data.image_size 160 --model.network.init_args.frozen_stages 2 --trainer.max_epochs 6>]

Both variants train ``configs/gemstones_finetune.yaml`` (with the options after ``--``) once:
(cli) ``fit`` as the command line runs it, every callback included; (plain) a hand-written PyTorch loop
of the same recipe (the same module, data module, AdamW groups, per-step warmup-cosine schedule,
label smoothing, precision and progressive resizing). After every epoch the clock stops, `test/` is scored as ``test``
scores it (the config's test-time augmentation, or ``--tta``'s) and the clock resumes: the times are
training only, counted from the command's start (building the model, reading the weights and the
data included). `test/` never steers training.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from lightning.pytorch import Callback

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]

from train_throughput import hidden_output, quiet  # noqa: E402

from gem_lightning.cli.app import cli_main  # noqa: E402
from gem_lightning.data.progressive_resizing import resize_batch  # noqa: E402

CONFIG = REPO / "configs" / "gemstones_finetune.yaml"
TARGETS = (0.70, 0.75, 0.80)
TTA: str | None = None
"""``--tta``: the test-time augmentation of the per-epoch scores (default: the config's)."""


class Clock:
    """Training seconds since the start, with evaluation time left out; one ``(epoch, seconds, top-1)`` row per epoch."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.paused = 0.0
        self.rows: list[tuple[int, float, float]] = []

    def score(self, epoch: int, model, datamodule, mixed: bool) -> None:
        stop = time.perf_counter()
        accuracy = test_accuracy(model, datamodule, mixed)
        self.rows.append((epoch, stop - self.start - self.paused, accuracy))
        print(
            f"  epoch {epoch + 1}: {self.rows[-1][1] / 60:.2f} min of training, test top-1 {accuracy:.2%}", file=sys.__stdout__, flush=True
        )
        self.paused += time.perf_counter() - stop


@torch.inference_mode()
def test_accuracy(model, datamodule, mixed: bool) -> float:
    """Top-1 on `test/` with the model's own probabilities (its test-time augmentation included)."""
    if "test" not in datamodule.datasets:
        datamodule.setup("test")
    was_training = model.training
    model.eval()
    if TTA is not None:
        model.model.tta = TTA
    correct = total = 0
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=mixed):
        for images, targets, _ in datamodule.test_dataloader():
            correct += int((model.predict_proba(images).argmax(-1) == targets).sum())
            total += len(targets)
    model.train(was_training)
    return correct / total


class EpochScore(Callback):
    def __init__(self, clock: Clock) -> None:
        self.clock = clock

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.clock.score(trainer.current_epoch, pl_module, trainer.datamodule, trainer.precision == "bf16-mixed")


def fit_arguments(args, root: str) -> list[str]:
    checkpoints = str(args.keep / "checkpoints") if args.keep else root
    return [
        "--config",
        str(CONFIG),
        "--data.data_dir",
        str(args.data_dir),
        *args.fit_options,
        "--trainer.logger.init_args.save_dir",
        str(args.keep or root),
        "--checkpoint.dirpath",
        checkpoints,
        "--trainer.enable_progress_bar",
        "false",
    ]


def run_cli(args) -> Clock:
    clock = Clock()
    with tempfile.TemporaryDirectory() as root, hidden_output():
        cli_main(["fit", *fit_arguments(args, root)], callbacks=[EpochScore(clock)])
    return clock


def run_plain(args) -> Clock:
    clock = Clock()
    with tempfile.TemporaryDirectory() as root, hidden_output():
        cli = cli_main(fit_arguments(args, root), run=False)
    datamodule, model, trainer = cli.datamodule, cli.model, cli.trainer
    datamodule.prepare_data()
    datamodule.setup("fit")
    model.prepare_training(from_scratch=True)
    optimizer = model.optimizer(model.parameter_groups())
    optimizer.param_groups[0]["lr"] *= model.hparams.backbone_lr_ratio
    scheduler = model.lr_scheduler(optimizer)  # the config's WarmupCosineLR, stepped per batch
    loader = datamodule.train_dataloader()
    total_steps = trainer.max_epochs * len(loader)
    scheduler.set_total_steps(total_steps)
    resizing = datamodule.progressive_resizing
    mixed = trainer.precision == "bf16-mixed"
    model.train()
    step = 0
    for epoch in range(trainer.max_epochs):
        for images, targets, _ in loader:
            if resizing is not None:
                images = resize_batch(images, resizing.size_at(step / total_steps, datamodule.image_size))
            step += 1
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=mixed):
                logits = model(images)
            loss = F.cross_entropy(logits.float(), targets, label_smoothing=model.hparams.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
        clock.score(epoch, model, datamodule, mixed)
    return clock


def time_to(rows: list[tuple[int, float, float]], target: float) -> str:
    for _, seconds, accuracy in rows:
        if accuracy >= target:
            return f"{seconds / 60:.2f} min"
    return f"not reached (best {max(a for *_, a in rows):.2%})"


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    ours, fit_options = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "datasets" / "gemstones")
    parser.add_argument("--variants", nargs="+", choices=("cli", "plain"), default=["cli", "plain"])
    parser.add_argument(
        "--tta", choices=("none", "hflip", "dihedral"), default=None, help="TTA of the per-epoch scores (default: the config's)"
    )
    parser.add_argument("--keep", type=Path, default=None, help="keep the CLI run's logs and checkpoints in this folder")
    args = parser.parse_args(ours)
    global TTA
    TTA = args.tta
    args.fit_options = fit_options
    quiet()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU {torch.backends.cpu.get_cpu_capability()}; "
        f"{CONFIG.name} {' '.join(fit_options)}",
        flush=True,
    )
    clocks = {}
    for variant in args.variants:
        print(f"{variant}:", flush=True)
        clocks[variant] = (run_cli if variant == "cli" else run_plain)(args)
    for variant, clock in clocks.items():
        print(
            f"{variant}: "
            + ", ".join(f"{target:.0%}: {time_to(clock.rows, target)}" for target in TARGETS)
            + f"; final {clock.rows[-1][2]:.2%} after {clock.rows[-1][1] / 60:.2f} min; per epoch (min, top-1): "
            + " ".join(f"({seconds / 60:.2f}, {accuracy:.1%})" for _, seconds, accuracy in clock.rows)
        )


if __name__ == "__main__":
    main()

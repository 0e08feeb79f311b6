"""Training throughput: a plain PyTorch loop vs our LightningModule through the Trainer vs the CLI defaults.

Run from the repository root (prints figures; not a test):

    python benchmarks/train_throughput.py [--data-dir ../shared/datasets/gemstones] [--steps 30]
        [--rounds 3] [--warmup 3] [--augment-on loader|device] [--compile] [--variants a,b,b_default,c]

All variants train the seed's network (``GemClassifier`` defaults = ``configs/gemstones.yaml``) on
the real photos at 220 px, batch 32, bf16-mixed autocast, channels_last, Adam 1e-3, fed by the
same ``GemDataModule`` loader over the warm decoded-image cache (same workers, same augmentation):

(a)         plain loop: ``GemClassifier.forward`` (normalise + network) + cross-entropy + Adam,
            written here, no Lightning in the loop;
(b)         ``lightning.Trainer(...).fit(GemClassifier, GemDataModule)``, lean: no logger,
            checkpointing, progress bar or model summary, no validation;
(b_default) the same with the Trainer's defaults (logger, checkpointing, progress bar, summary);
(c)         what a new user runs: ``configs/gemstones.yaml`` through ``cli_main(..., run=False)``
            then ``cli.trainer.fit(cli.model, cli.datamodule)`` (no validation, max_steps).

Each timed run skips ``--warmup`` steps, then times ``--steps`` steps from one batch end to another
(data waits included). Variants alternate within each round so machine drift hits all of them; the
ratios use the median per variant. Also printed: FLOPs per image (forward, training step), the
machine's measured 4096^3 matmul rate in bf16 and fp32, and the share of it a training step reaches.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, Trainer
from torch.utils.flop_counter import FlopCounterMode

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from gem_lightning.cli import GemCLI, cli_main  # noqa: E402
from gem_lightning.data.datamodule import GemDataModule  # noqa: E402
from gem_lightning.data.transforms import Augmentation  # noqa: E402
from gem_lightning.module import GemClassifier  # noqa: E402

IMAGE_SIZE, BATCH_SIZE = 220, 32
VARIANTS = ("a", "b", "b_default", "c")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "datasets" / "gemstones")
    parser.add_argument("--steps", type=int, default=30, help="timed training steps per run")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps before each timed run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--augment-on", choices=("loader", "device"), default="loader")
    parser.add_argument("--compile", action="store_true", help="torch.compile the network (a) / module (b, c)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"subset of {','.join(VARIANTS)}")
    parser.add_argument("--matmul-reps", type=int, default=5)
    return parser.parse_args(argv)


class StepClock(Callback):
    """Times of each training batch end; throughput from the end of warm-up to the last step."""

    def __init__(self) -> None:
        self.ends: list[float] = []
        self.first_step_s = 0.0
        self._fit_start = 0.0

    def on_train_start(self, trainer, pl_module) -> None:
        self._fit_start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.ends.append(time.perf_counter())
        if len(self.ends) == 1:
            self.first_step_s = self.ends[0] - self._fit_start

    def images_per_s(self, warmup: int) -> float:
        timed = self.ends[warmup - 1 :]
        return (len(timed) - 1) * BATCH_SIZE / (timed[-1] - timed[0])


def make_datamodule(args) -> GemDataModule:
    datamodule = GemDataModule(str(args.data_dir), image_size=IMAGE_SIZE, batch_size=BATCH_SIZE, augment=Augmentation(), augment_on=args.augment_on)
    datamodule.prepare_data()
    datamodule.setup("fit")
    return datamodule


def run_plain(args, datamodule: GemDataModule) -> tuple[float, float]:
    """(a): images/s and first-step seconds of a hand-written loop over the same loader."""
    model = GemClassifier(datamodule.class_names, IMAGE_SIZE)
    forward = torch.compile(model) if args.compile else model  # plain nn.Module call: normalise + network
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    ends, start = [], time.perf_counter()
    for step, (images, targets, _) in enumerate(datamodule.train_dataloader()):
        if datamodule.batch_augment is not None:
            images = datamodule.batch_augment(images)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = forward(images)
            loss = F.cross_entropy(logits.float(), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        ends.append(time.perf_counter())
        if len(ends) == args.warmup + args.steps:
            break
    timed = ends[args.warmup - 1 :]
    return (len(timed) - 1) * BATCH_SIZE / (timed[-1] - timed[0]), ends[0] - start


@contextlib.contextmanager
def hidden_output():
    """Progress bars and summaries are still produced (their cost counts) but not shown."""
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull), contextlib.redirect_stderr(devnull):
        yield


def lightning_trainer(args, root: str, lean: bool, clock: StepClock) -> Trainer:
    common = dict(
        accelerator="cpu", devices=1, precision="bf16-mixed", max_steps=args.warmup + args.steps,
        limit_val_batches=0, num_sanity_val_steps=0, default_root_dir=root, callbacks=[clock],
    )
    if lean:
        return Trainer(**common, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    return Trainer(**common)


def run_lightning(args, datamodule: GemDataModule, lean: bool) -> tuple[float, float]:
    """(b) lean and (b_default): our module and data module through a Trainer."""
    model = GemClassifier(datamodule.class_names, IMAGE_SIZE)
    clock = StepClock()
    with tempfile.TemporaryDirectory() as root, hidden_output():
        trainer = lightning_trainer(args, root, lean, clock)  # the progress bar is rendered, not shown
        trainer.fit(torch.compile(model) if args.compile else model, datamodule=datamodule)
    return clock.images_per_s(args.warmup), clock.first_step_s


def build_cli(argv: list[str]):
    """``cli_main(argv, run=False)``; if ``GemCLI.before_instantiate_classes`` cannot run without a
    subcommand (it reads ``config.subcommand``), retry with it skipped, which is what it does for ``fit``."""
    try:
        return cli_main(argv, run=False)
    except AttributeError as error:
        if "subcommand" not in str(error):
            raise
        if not getattr(build_cli, "warned", False):
            print(f"note: cli_main(run=False) failed ({error}); skipping GemCLI.before_instantiate_classes as for `fit`", file=sys.__stdout__)
            build_cli.warned = True
        original = GemCLI.before_instantiate_classes
        GemCLI.before_instantiate_classes = lambda self: None
        try:
            return cli_main(argv, run=False)
        finally:
            GemCLI.before_instantiate_classes = original


def run_cli(args) -> tuple[float, float]:
    """(c): the defaults a new user gets from configs/gemstones.yaml through the CLI class."""
    clock = StepClock()
    with tempfile.TemporaryDirectory() as root, hidden_output():
        cli = build_cli(
            [
                "--config", str(REPO / "configs" / "gemstones.yaml"),
                "--data.data_dir", str(args.data_dir),
                "--data.augment_on", args.augment_on,
                "--trainer.max_steps", str(args.warmup + args.steps),
                "--trainer.limit_val_batches", "0",
                "--trainer.num_sanity_val_steps", "0",
                "--trainer.default_root_dir", root,
                "--trainer.logger.init_args.save_dir", root,
                "--checkpoint.dirpath", root,
            ]
        )
        cli.trainer.callbacks.append(clock)
        model = torch.compile(cli.model) if args.compile else cli.model
        cli.trainer.fit(model, cli.datamodule)
    return clock.images_per_s(args.warmup), clock.first_step_s


def flops_per_image(datamodule: GemDataModule) -> tuple[float, float]:
    """Forward and training-step (forward + backward) FLOPs per 220 px image, as counted by PyTorch."""
    model = GemClassifier(datamodule.class_names, IMAGE_SIZE)
    images = torch.randint(0, 256, (BATCH_SIZE, 3, IMAGE_SIZE, IMAGE_SIZE), dtype=torch.uint8)
    with FlopCounterMode(display=False) as forward:
        with torch.no_grad():
            model(images)
    with FlopCounterMode(display=False) as step:
        F.cross_entropy(model(images), torch.zeros(BATCH_SIZE, dtype=torch.long)).backward()
    return forward.get_total_flops() / BATCH_SIZE, step.get_total_flops() / BATCH_SIZE


def matmul_rate(dtype: torch.dtype, reps: int, n: int = 4096) -> float:
    """Best FLOP/s of an n^3 matmul over ``reps`` runs (one untimed)."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def quiet() -> None:
    warnings.filterwarnings("ignore")
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "gem_lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)


def main(argv=None) -> None:
    args = parse_args(argv)
    quiet()
    variants = [v for v in args.variants.split(",") if v]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; 220 px, batch {BATCH_SIZE}, bf16-mixed, "
          f"channels_last, augment_on={args.augment_on}, compile={args.compile}; {args.steps} steps after {args.warmup} warm-up, {args.rounds} rounds")
    datamodule = make_datamodule(args)
    print(f"{len(datamodule.datasets['train'])} training images, {datamodule.num_workers} loader worker(s)")

    results: dict[str, list[float]] = {v: [] for v in variants}
    first_steps: dict[str, list[float]] = {v: [] for v in variants}
    runners = {
        "a": lambda: run_plain(args, datamodule),
        "b": lambda: run_lightning(args, datamodule, lean=True),
        "b_default": lambda: run_lightning(args, datamodule, lean=False),
        "c": lambda: run_cli(args),
    }
    for round_ in range(args.rounds):
        order = variants if round_ % 2 == 0 else variants[::-1]  # alternate the order too
        for variant in order:
            rate, first = runners[variant]()
            results[variant].append(rate)
            first_steps[variant].append(first)
            print(f"round {round_ + 1} {variant:>9}: {rate:7.1f} images/s  (first step {first:.1f} s)", flush=True)

    medians = {v: statistics.median(r) for v, r in results.items()}
    print("\nmedian images/s: " + ", ".join(f"{v} {m:.1f}" for v, m in medians.items()))
    if "a" in results:
        for v in variants:
            if v != "a":
                per_round = [r / a for r, a in zip(results[v], results["a"])]
                print(f"{v}/a: {medians[v] / medians['a']:.3f} (median of medians; per round {', '.join(f'{x:.3f}' for x in per_round)})")
    if args.compile:
        print("first step incl. compile (s): " + ", ".join(f"{v} {statistics.median(f):.1f}" for v, f in first_steps.items()))

    forward, step = flops_per_image(datamodule)
    print(f"\nFLOPs per image: forward {forward / 1e9:.2f} GFLOP, training step {step / 1e9:.2f} GFLOP ({step / forward:.2f}x forward)")
    bf16, fp32 = matmul_rate(torch.bfloat16, args.matmul_reps), matmul_rate(torch.float32, args.matmul_reps)
    print(f"4096^3 matmul: bf16 {bf16 / 1e12:.2f} TFLOP/s, fp32 {fp32 / 1e12:.2f} TFLOP/s (best of {args.matmul_reps})")
    for v, m in medians.items():
        achieved = m * step
        print(f"{v:>9}: {achieved / 1e9:.0f} GFLOP/s = {achieved / bf16:.1%} of the bf16 matmul rate, {achieved / fp32:.1%} of fp32")


if __name__ == "__main__":
    main()

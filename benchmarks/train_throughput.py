"""Training throughput: a plain PyTorch loop vs our LightningModule through the Trainer vs the CLI.

Run from the repository root (prints figures; not a test):

    python benchmarks/train_throughput.py [--data-dir ../shared/datasets/gemstones] [--steps 20]
        [--rounds 4] [--warmup 3] [--augment-on loader|device] [--compile off|on|both]
        [--variants a,b,b_default,c_seed,c] [--threads 2,1] [--profile STEPS]
        [--device cpu|cuda] [--precision bf16-mixed|16-mixed|32-true] [--num-workers N]

(a), (b), (b_default) and (c_seed) train the seed's network (``GemClassifier`` defaults, which
``configs/gemstones_seed.yaml`` spells out) on the real photos at 220 px, batch 32 (``--image-size``,
``--batch-size`` for a and b), bf16-mixed autocast (``--precision`` for a and b), channels_last,
Adam 1e-3, on ``--device`` (the CPU, or a CUDA GPU), fed by a ``GemDataModule`` loader over the
warm decoded-image cache (same workers, same augmentation):

(a)         plain loop: ``GemClassifier.forward`` (normalise + network) + cross-entropy + Adam,
            written here, no Lightning in the loop;
(b)         ``lightning.Trainer(...).fit(GemClassifier, GemDataModule)``, lean: no logger,
            checkpointing, progress bar or model summary;
(b_default) the same with the Trainer's defaults (logger, checkpointing, progress bar, summary);
(c_seed)    ``configs/gemstones_seed.yaml`` through the CLI class: ``cli_main([...], run=False)``
            then ``cli.trainer.fit(cli.model, cli.datamodule)`` (the CLI's callbacks and logger);
(c)         the same with ``configs/gemstones.yaml``, the recipe a new user gets: its own network,
            image size and batch size, so it is compared in FLOP/s, not images/s.
``--cli-args`` appends options to the CLI variants' command line (e.g. smaller sizes for a dry run).

No validation runs (``limit_val_batches=0``); ``max_steps`` ends each run. Each timed run skips
``--warmup`` steps, then times ``--steps`` steps from one batch end to another (data waits
included), reported as images/s over the timed steps and as images/s of the median step (robust to
bursts of other jobs), with the share of time spent between steps (waiting for data, transfer,
device augmentation, loop hooks) and the cores other processes used meanwhile (from /proc: the
machine is shared). Variants alternate within each round, in reversed order every other round, so
drift hits all of them; summaries use medians over rounds, over all runs and over "quiet" runs.
On a GPU each step starts and ends with ``torch.cuda.synchronize()``, so a step's time is the
device's work, not the time to queue it, and the time between steps (transfer and device
augmentation included) is what the step waited for.
Also printed: FLOPs per image (forward and training step, counted by ``FlopCounterMode``), the
device's 4096^3 matmul rate in bf16 and fp32, and the share of it the training steps reach.
``--threads 2,1`` runs every variant at each torch thread count (labels ``a@2t``, ``a@1t``, ...).
``--profile STEPS`` instead runs ``torch.profiler`` over STEPS steps of (a): time per phase and op.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shlex
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, Trainer
from torch.utils.flop_counter import FlopCounterMode

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from gem_lightning.cli.app import cli_main  # noqa: E402
from gem_lightning.data.augmentation import Augmentation  # noqa: E402
from gem_lightning.data.datamodule import GemDataModule  # noqa: E402
from gem_lightning.data.loader import Loader  # noqa: E402
from gem_lightning.training.module import GemClassifier  # noqa: E402

VARIANTS = ("a", "b", "b_default", "c_seed", "c")
CONFIGS = {"c_seed": REPO / "configs" / "gemstones_seed.yaml", "c": REPO / "configs" / "gemstones.yaml"}
AUTOCAST_DTYPES = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16, "32-true": None}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "datasets" / "gemstones")
    parser.add_argument("--steps", type=int, default=20, help="timed training steps per run")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps before each timed run")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--augment-on", choices=("loader", "device"), default="loader")
    parser.add_argument(
        "--compile",
        choices=("off", "on", "both"),
        default="off",
        help="nn.Module.compile() the model's forward (every variant); both: each variant with and without",
    )
    parser.add_argument(
        "--compile-backend", default="inductor", help="torch.compile backend (eager: Dynamo's tracing alone, no code generation)"
    )
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"subset of {','.join(VARIANTS)}")
    parser.add_argument("--matmul-reps", type=int, default=10)
    parser.add_argument("--threads", default="", help="torch threads to compare, e.g. 2,1 (default: as set)")
    parser.add_argument("--quiet", type=float, default=0.3, help="'quiet' runs: other processes below this many cores")
    parser.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="STEPS",
        help="instead of the comparison: torch.profiler over STEPS steps of (a), by phase and by op",
    )
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument(
        "--precision", choices=tuple(AUTOCAST_DTYPES), default="bf16-mixed", help="of (a) and (b); the CLI variants use their config's"
    )
    parser.add_argument(
        "--num-workers", type=int, default=None, help="loader workers (default: the data module's, one per spare core up to 8)"
    )
    parser.add_argument("--image-size", type=int, default=220, help="of (a) and (b)")
    parser.add_argument("--batch-size", type=int, default=32, help="of (a) and (b)")
    parser.add_argument(
        "--cli-args", type=shlex.split, default=[], help="extra options for the CLI variants, e.g. --cli-args='--data.batch_size 8'"
    )
    args = parser.parse_args(argv)
    args.compiled = False
    return args


CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_snapshot() -> tuple[float, float, float]:
    """(wall s, CPU s busy on the whole machine incl. steal, CPU s of this process and its children)."""
    try:
        user, nice, system, _, _, irq, softirq, steal = map(int, open("/proc/stat").readline().split()[1:9])
        mine, me = 0, os.getpid()
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                rest = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if stat.parent.name == str(me) or int(rest[1]) == me:
                mine += int(rest[11]) + int(rest[12])
        return time.perf_counter(), (user + nice + system + irq + softirq + steal) / CLOCK_TICKS, mine / CLOCK_TICKS
    except (OSError, ValueError):  # not Linux: no load figure
        return time.perf_counter(), float("nan"), float("nan")


def others_cores(before: tuple[float, float, float], after: tuple[float, float, float]) -> float:
    """Cores kept busy by other processes (and the hypervisor) between two snapshots."""
    return ((after[1] - before[1]) - (after[2] - before[2])) / (after[0] - before[0])


def synchronize() -> None:
    """On a GPU, wait for the queued work: a time read next is the device's, not the time to queue it."""
    if torch.cuda.is_initialized():
        torch.cuda.synchronize()


@dataclass
class Run:
    """One timed run: when each step got its batch (fetched, transferred, augmented) and ended, and
    CPU snapshots at the start and end of the timed window."""

    warmup: int
    total: int
    starts: list[float] = field(default_factory=list)
    ends: list[float] = field(default_factory=list)
    begin: float = 0.0
    images: list[int] = field(default_factory=list)
    snapshots: list[tuple[float, float, float]] = field(default_factory=list)

    def step_start(self) -> None:
        synchronize()
        self.starts.append(time.perf_counter())

    def step_end(self, images: int) -> None:
        synchronize()
        self.ends.append(time.perf_counter())
        self.images.append(images)
        if len(self.ends) in (self.warmup, self.total):
            self.snapshots.append(cpu_snapshot())

    def stats(self, warmup: int) -> dict[str, float]:
        """``mean``: images/s over the timed steps; ``median``: images/s of the median step (robust to
        bursts of other load); ``wait``: share of the time between a step's end and the next step's
        start (waiting for data, transfer, device augmentation, loop overhead); ``busy``: images/s
        over the time inside the steps alone (what they would reach if data came for free); ``first``: seconds
        from the start to the end of the first step (compilation included); ``others``: cores used by
        other processes meanwhile (the machine is shared)."""
        ends, starts, images = self.ends[warmup - 1 :], self.starts[warmup:], self.images[warmup:]
        steps = [b - a for a, b in zip(ends, ends[1:])]
        waits = [s - e for e, s in zip(ends, starts)]
        return {
            "mean": sum(images) / (ends[-1] - ends[0]),
            "median": statistics.median(images) / statistics.median(steps),
            "wait": sum(waits) / (ends[-1] - ends[0]),
            "busy": sum(images) / (ends[-1] - ends[0] - sum(waits)),
            "first": self.ends[0] - self.begin,
            "others": others_cores(*self.snapshots[:2]) if len(self.snapshots) >= 2 else float("nan"),
        }


class StepClock(Callback):
    """Records a :class:`Run` from Lightning's hooks (``on_train_batch_start`` follows the transfer)."""

    def __init__(self, args) -> None:
        self.run = Run(args.warmup, args.warmup + args.steps)

    def on_train_start(self, trainer, pl_module) -> None:
        self.run.begin = time.perf_counter()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.run.step_start()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.run.step_end(len(batch[0]))


def make_datamodule(args) -> GemDataModule:
    datamodule = GemDataModule(
        str(args.data_dir),
        image_size=args.image_size,
        batch_size=args.batch_size,
        augment=Augmentation(),
        augment_on=args.augment_on,
        loader=Loader(num_workers=args.num_workers),
    )
    datamodule.prepare_data()
    datamodule.setup("fit")
    return datamodule


def autocast(args) -> contextlib.AbstractContextManager:
    """The mixed-precision context of ``args.precision`` on ``args.device``, as Lightning's plugin sets it."""
    dtype = AUTOCAST_DTYPES[args.precision]
    return torch.autocast(args.device, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def training_batches(datamodule: GemDataModule, device: torch.device):
    """Training batches on ``device``, augmented there with ``augment_on: device``, epoch after epoch."""
    while True:
        for images, targets, _ in datamodule.train_dataloader():
            images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
            yield (datamodule.batch_augment(images) if datamodule.batch_augment is not None else images), targets


def run_plain(args, datamodule: GemDataModule) -> Run:
    """(a): a hand-written loop over the same loader."""
    device = torch.device(args.device)
    model = GemClassifier(datamodule.class_names, args.image_size).to(device)
    if args.compiled:
        model.compile(backend=args.compile_backend)  # forward only, as in (b) and (c)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler(args.device, enabled=args.precision == "16-mixed")
    model.train()
    run = Run(args.warmup, args.warmup + args.steps, begin=time.perf_counter())
    for images, targets in training_batches(datamodule, device):
        run.step_start()
        with autocast(args):
            logits = model(images)
            loss = F.cross_entropy(logits.float(), targets)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        run.step_end(len(images))
        if len(run.ends) == run.total:
            break
    return run


@contextlib.contextmanager
def hidden_output():
    """Progress bars and summaries are still produced (their cost counts) but not shown."""
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull), contextlib.redirect_stderr(devnull):
        yield


def profile_plain(args, datamodule: GemDataModule) -> None:
    """Where a plain training step's time goes: phases (record_function) and the heaviest ops."""
    from torch.profiler import ProfilerActivity, profile, record_function

    device = torch.device(args.device)
    model = GemClassifier(datamodule.class_names, args.image_size).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    batches = iter(datamodule.train_dataloader())

    def step() -> None:
        with record_function("## data wait"):
            images, targets, _ = next(batches)
            images, targets = images.to(device), targets.to(device)
        if datamodule.batch_augment is not None:
            with record_function("## device augmentation"):
                images = datamodule.batch_augment(images)
        with record_function("## forward + loss"), autocast(args):
            loss = F.cross_entropy(model(images).float(), targets)
        with record_function("## backward"):
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
        with record_function("## optimizer"):
            optimizer.step()

    for _ in range(args.warmup):
        step()
    start = time.perf_counter()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(args.profile):
            step()
    wall = (time.perf_counter() - start) / args.profile
    events = prof.key_averages()
    print(f"\n(a) profiled over {args.profile} steps: {wall * 1e3:.0f} ms per step (profiler on)")
    for event in sorted((e for e in events if e.key.startswith("## ")), key=lambda e: -e.cpu_time_total):
        per_step = event.cpu_time_total / 1e3 / args.profile
        print(f"  {event.key[3:]:<22} {per_step:8.1f} ms  {per_step / (wall * 1e3):6.1%}")
    print(events.table(sort_by="self_cpu_time_total", row_limit=15, max_name_column_width=40))


def lightning_trainer(args, root: str, lean: bool, clock: StepClock) -> Trainer:
    common = dict(
        accelerator=args.device,
        devices=1,
        precision=args.precision,
        max_steps=args.warmup + args.steps,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        default_root_dir=root,
        callbacks=[clock],
    )
    if lean:
        return Trainer(**common, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    return Trainer(**common)


def run_lightning(args, datamodule: GemDataModule, lean: bool) -> Run:
    """(b) lean and (b_default): our module and data module through a Trainer."""
    model = GemClassifier(datamodule.class_names, args.image_size)
    clock = StepClock(args)
    with tempfile.TemporaryDirectory() as root, hidden_output():
        trainer = lightning_trainer(args, root, lean, clock)  # the progress bar is rendered, not shown
        if args.compiled:
            model.compile(
                backend=args.compile_backend
            )  # forward only: fit(torch.compile(model)) also compiles training_step (metrics, logging)
        trainer.fit(model, datamodule=datamodule)
    return clock.run


def run_cli(args, variant: str, recipes: dict) -> Run:
    """(c_seed), (c): a config through the CLI class, as a user's ``fit`` builds it."""
    clock = StepClock(args)
    with tempfile.TemporaryDirectory() as root, hidden_output():
        cli = cli_main(
            [
                "--config",
                str(CONFIGS[variant]),
                "--data.data_dir",
                str(args.data_dir),
                "--data.augment_on",
                args.augment_on,
                "--trainer.accelerator",
                args.device,
                *(["--data.loader.num_workers", str(args.num_workers)] if args.num_workers is not None else []),
                "--trainer.max_steps",
                str(args.warmup + args.steps),
                "--trainer.limit_val_batches",
                "0",
                "--trainer.num_sanity_val_steps",
                "0",
                "--trainer.default_root_dir",
                root,
                "--trainer.logger.init_args.save_dir",
                root,
                "--checkpoint.dirpath",
                root,
                *args.cli_args,
            ],
            run=False,
        )
        cli.trainer.callbacks.append(clock)
        if variant not in recipes:  # what this config trains, once
            size, batch = cli.datamodule.image_size, cli.datamodule.batch_size
            recipes[variant] = (size, batch, *flops_per_image(cli.model, size, batch))
            cli.model.zero_grad(set_to_none=True)
        if args.compiled:
            cli.model.compile(backend=args.compile_backend)
        cli.trainer.fit(cli.model, cli.datamodule)
    return clock.run


def flops_per_image(model: torch.nn.Module, image_size: int, batch_size: int) -> tuple[float, float]:
    """Forward and training-step (forward + backward) FLOPs per image, as counted by PyTorch."""
    images = torch.randint(0, 256, (batch_size, 3, image_size, image_size), dtype=torch.uint8)
    with FlopCounterMode(display=False) as forward:
        with torch.no_grad():
            model(images)
    with FlopCounterMode(display=False) as step:
        F.cross_entropy(model(images), torch.zeros(batch_size, dtype=torch.long)).backward()
    return forward.get_total_flops() / batch_size, step.get_total_flops() / batch_size


def matmul_rate(dtype: torch.dtype, reps: int, n: int = 4096, device: str = "cpu") -> float:
    """Best FLOP/s of an n^3 matmul over ``reps`` runs (one untimed), on ``device``."""
    a, b = torch.randn(n, n, dtype=dtype, device=device), torch.randn(n, n, dtype=dtype, device=device)
    sync = torch.cuda.synchronize if a.is_cuda else (lambda: None)
    a @ b
    sync()
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        a @ b
        sync()
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
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}; "
        f"{args.image_size} px, batch {args.batch_size}, {args.precision}, channels_last, "
        f"augment_on={args.augment_on}, compile={args.compile}; {args.steps} steps after {args.warmup} warm-up, {args.rounds} rounds"
    )
    datamodule = make_datamodule(args)
    print(f"{len(datamodule.datasets['train'])} training images, {datamodule.loader.workers} loader worker(s)")
    if args.profile:
        profile_plain(args, datamodule)
        return

    seed_model = GemClassifier(datamodule.class_names, args.image_size)
    recipes = {
        v: (args.image_size, args.batch_size, *flops_per_image(seed_model, args.image_size, args.batch_size))
        for v in ("a", "b", "b_default")
    }
    del seed_model
    base_runners = {
        "a": lambda: run_plain(args, datamodule),
        "b": lambda: run_lightning(args, datamodule, lean=True),
        "b_default": lambda: run_lightning(args, datamodule, lean=False),
        "c_seed": lambda: run_cli(args, "c_seed", recipes),
        "c": lambda: run_cli(args, "c", recipes),
    }
    threads = [int(t) for t in args.threads.split(",")] if args.threads else [torch.get_num_threads()]
    compiles = {"off": [False], "on": [True], "both": [False, True]}[args.compile]
    labels = {
        f"{v}{f'@{t}t' if len(threads) > 1 else ''}{'+compile' if c and len(compiles) > 1 else ''}": (v, t, c)
        for v in variants
        for t in threads
        for c in compiles
    }
    results: dict[str, list[dict[str, float]]] = {label: [] for label in labels}
    for round_ in range(args.rounds):
        order = list(labels) if round_ % 2 == 0 else list(labels)[::-1]  # alternate the order too
        for label in order:
            variant, n, args.compiled = labels[label]
            torch.set_num_threads(n)
            r = base_runners[variant]().stats(args.warmup)
            results[label].append(r)
            print(
                f"round {round_ + 1} {label:>9}: {r['mean']:6.1f} images/s (median step: {r['median']:6.1f}), "
                f"waiting {r['wait']:5.1%}, first step {r['first']:.1f} s, other processes {r['others']:.2f} cores",
                flush=True,
            )
    torch.set_num_threads(threads[0])

    print("\nrecipes (image px, batch, GFLOP per image forward / training step):")
    for v in variants:
        size, batch, forward, step = recipes[v]
        print(f"  {v:>9}: {size} px, batch {batch}, {forward / 1e9:.3f} / {step / 1e9:.3f} ({step / forward:.2f}x forward)")

    def median(label: str, key: str, quiet_only: bool = False) -> float:
        values = [r[key] for r in results[label] if not quiet_only or r["others"] < args.quiet]
        return statistics.median(values) if values else float("nan")

    def step_flops(label: str) -> float:
        return recipes[labels[label][0]][3]

    ref = next((label for label, (v, *_) in labels.items() if v == "a"), None)  # (a), first thread count, first compile mode
    same_recipe = [label for label in labels if ref and label != ref and recipes[labels[label][0]] == recipes["a"]]
    for quiet_only in (False, True):
        runs = f"runs with other processes < {args.quiet} cores" if quiet_only else "all runs"
        counts = ", ".join(f"{label} {sum(1 for r in results[label] if not quiet_only or r['others'] < args.quiet)}" for label in labels)
        print(f"\n{runs} ({counts}):")
        for key, title in (("mean", "images/s over the timed steps"), ("median", "images/s of the median step")):
            line = ", ".join(f"{label} {median(label, key, quiet_only):.1f}" for label in labels)
            ratios = ", ".join(
                f"{label}/{ref} {median(label, key, quiet_only) / median(ref, key, quiet_only):.3f}" for label in same_recipe
            )
            print(f"  median {title}: {line}" + (f"; {ratios}" if ratios else ""))
        gflops = {label: median(label, "median", quiet_only) * step_flops(label) / 1e9 for label in labels}
        ratios = ", ".join(f"{label}/{ref} {gflops[label] / gflops[ref]:.3f}" for label in labels if ref and label != ref)
        print(
            "  training GFLOP/s (median step): "
            + ", ".join(f"{label} {g:.0f}" for label, g in gflops.items())
            + (f"; {ratios}" if ratios else "")
        )
    print("median waiting share: " + ", ".join(f"{label} {median(label, 'wait'):.1%}" for label in labels))
    print("median other processes (cores): " + ", ".join(f"{label} {median(label, 'others'):.2f}" for label in labels))
    if args.compile != "off":
        print("first step incl. compilation (s): " + ", ".join(f"{label} {median(label, 'first'):.1f}" for label in labels))

    quiet_any = all(any(r["others"] < args.quiet for r in results[label]) for label in labels)
    for n in threads:
        torch.set_num_threads(n)
        before = cpu_snapshot()
        bf16, fp32 = (matmul_rate(dtype, args.matmul_reps, device=args.device) for dtype in (torch.bfloat16, torch.float32))
        print(
            f"\n4096^3 matmul, {n} thread(s): bf16 {bf16 / 1e12:.2f} TFLOP/s, fp32 {fp32 / 1e12:.2f} TFLOP/s (best of "
            f"{args.matmul_reps}; other processes {others_cores(before, cpu_snapshot()):.2f} cores meanwhile)"
        )
        print(f"share of that ceiling (median-step images/s of {'quiet' if quiet_any else 'all'} runs x training-step FLOPs):")
        for label in (lb for lb, (_, t, _) in labels.items() if t == n):
            achieved = median(label, "median", quiet_any) * step_flops(label)
            print(
                f"  {label:>9}: {achieved / 1e9:.0f} GFLOP/s = {achieved / bf16:.1%} of the bf16 matmul rate, {achieved / fp32:.1%} of fp32"
            )


if __name__ == "__main__":
    main()

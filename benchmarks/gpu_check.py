"""The GPU check: prove the CUDA paths on one GPU and find where its training time goes, in one run.

Run from the repository root (prints progress, writes figures; not a test):

    python benchmarks/gpu_check.py --data-dir ../shared/datasets/gemstones --out runs/gpu-check
    python benchmarks/gpu_check.py --dry-run --data-dir <dir> --out /tmp/gpu-check   # every step small, on the CPU

On a CUDA GPU it is sized to finish within 6 minutes on one H200 with 16 CPU cores (``--budget``
seconds, 330 by default: a step is not started with less than ``MIN_STEP_S`` left, and one that
runs past the budget is stopped, keeping the figures it has). ``--dry-run`` (alias ``--cpu-small``)
runs every step on the CPU with small images, batches and step counts, to check the script itself;
its figures mean nothing. Steps that need CUDA are reported as skipped, with the reason.

It writes ``<out>.json`` (every figure; rewritten after each step, so a run that is killed keeps
what it did), ``<out>.md`` (the same as tables, to paste into docs/performance.md) and
``<out>.log`` (Lightning's output and the tracebacks of failed steps). Steps, in this order
(``--only`` picks some, for a rerun):

environment   versions, the GPU, CPU cores; the device's bf16 and fp32 matmul rate (the ceiling).
cuda_tests    ``python -m pytest -m cuda tests`` in a subprocess.
cli           ``fit`` (one epoch of ``configs/gemstones.yaml`` on the real photos), then ``validate``,
              ``test`` and ``predict`` from its checkpoint, through the CLI in this process, with
              ``16-mixed`` and ``bf16-mixed``, channels-last, ``augment_on`` loader and device (fit).
throughput    plain loop vs Trainer vs CLI (``benchmarks/train_throughput.py``'s variants a, b,
              c_seed, c: the seed recipe and ``configs/gemstones.yaml``), ``--rounds`` alternating
              rounds; images/s, ratios to the plain loop, GFLOP/s and its share of the matmul rate.
data_wait     for each recipe, loader and device augmentation, 1/4/8/15 loader workers: the loader's
              own images/s (``data_pipeline.timed_pass``, no model) and, training through the CLI,
              the share of step time spent waiting for the batch and the images/s inside the steps.
predict       ``benchmarks/predict_throughput.py``'s three paths (CLI, ``Trainer.predict``, a
              plain loop) over ``<data-dir>/test``, untrained seed network.
ddp           in a fresh process: ``fit`` with ``configs/ddp_gpu.yaml`` on one device: the time of
              NCCL's ``init_process_group``, the DDP wrapper, SyncBatchNorm layers, an all-reduce.
compile       ``torch.compile`` (``nn.Module.compile``) of variants a and b: the first step's time
              (compilation included) apart from the steady images/s.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import platform
import re
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]

import data_pipeline  # noqa: E402
import predict_throughput  # noqa: E402
import train_throughput  # noqa: E402

from gem_lightning.cli.app import cli_main  # noqa: E402
from gem_lightning.data.datasets import find_predict_files  # noqa: E402

CONFIGS = REPO / "configs"
MIN_STEP_S = 15
"""A step is not started with fewer seconds than this left of the budget."""


@dataclass(frozen=True)
class Sizes:
    """How big each step runs: on the GPU, or small on the CPU (the dry run)."""

    steps: int  # timed training steps per throughput run
    warmup: int  # untimed steps before them
    rounds: int  # alternating rounds of the throughput variants
    wait_steps: int  # timed steps per data_wait run
    workers: tuple[int, ...]  # loader workers compared in data_wait
    loader_batches: int  # batches timed per loader-only pass
    image_size: int  # of variants a and b
    batch_size: int
    matmul_n: int
    ddp_steps: int
    compile_backend: str = "inductor"
    cli_sizes: tuple[str, ...] = ()  # appended to every CLI command line
    cli_limits: tuple[str, ...] = ()  # appended to the cli step's commands
    predict_rounds: int = 2


GPU_SIZES = Sizes(
    steps=30,
    warmup=5,
    rounds=2,
    wait_steps=20,
    workers=(1, 4, 8, 15),
    loader_batches=40,
    image_size=220,
    batch_size=32,
    matmul_n=8192,
    ddp_steps=20,
)
DRY_SIZES = Sizes(
    steps=2,
    warmup=1,
    rounds=1,
    wait_steps=2,
    workers=(1,),
    loader_batches=3,
    image_size=64,
    batch_size=4,
    matmul_n=256,
    ddp_steps=2,
    compile_backend="eager",
    cli_sizes=("--data.image_size", "64", "--data.batch_size", "4"),
    cli_limits=(
        "--trainer.limit_train_batches",
        "3",
        "--trainer.limit_val_batches",
        "2",
        "--trainer.limit_test_batches",
        "2",
        "--trainer.limit_predict_batches",
        "2",
    ),
    predict_rounds=1,
)


class Skipped(Exception):
    """The step cannot run here; the message says why."""


class OutOfBudget(BaseException):
    """The time budget ran out in the middle of a step (BaseException: no step's own handler keeps going)."""


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list] = field(default_factory=list)


@dataclass
class StepResult:
    status: str = "not run"  # ok, failed, skipped (cannot run here), out of budget (not started or stopped)
    reason: str = ""
    seconds: float = 0.0
    figures: dict = field(default_factory=dict)
    tables: list[Table] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # parts that could not run here, with the reason

    def table(self, title: str, columns: list[str]) -> Table:
        self.tables.append(Table(title, columns))
        return self.tables[-1]


@dataclass
class Context:
    """What every step needs: where the photos are, the device, the sizes, where to write."""

    data_dir: Path
    device: str  # cpu or cuda
    sizes: Sizes
    work: Path  # temporary run folders and checkpoints
    log: object  # text file for Lightning's output
    results: dict[str, StepResult]

    @property
    def cuda(self) -> bool:
        return self.device == "cuda"

    @property
    def accelerator(self) -> str:
        return "gpu" if self.cuda else "cpu"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "datasets" / "gemstones")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "gpu-check", help="writes <out>.json, <out>.md, <out>.log")
    parser.add_argument("--dry-run", "--cpu-small", action="store_true", help="every step small, on the CPU (checks the script)")
    parser.add_argument("--budget", type=float, default=None, help="seconds for all steps (default: 330 on a GPU, unlimited in a dry run)")
    parser.add_argument("--only", default="", help=f"comma-separated subset of {','.join(STEPS)}")
    parser.add_argument("--ddp-probe", type=Path, default=None, help=argparse.SUPPRESS)  # internal: the ddp step's fresh process
    args = parser.parse_args(argv)
    unknown = set(filter(None, args.only.split(","))) - set(STEPS)
    if unknown:
        parser.error(f"--only: unknown step(s) {', '.join(sorted(unknown))}; the steps are {', '.join(STEPS)}")
    return args


# Helpers ---------------------------------------------------------------------------------------


def median(values) -> float:
    values = [v for v in values if not math.isnan(v)]
    return statistics.median(values) if values else float("nan")


def run_cli(ctx: Context, args: list[str]):
    """``main.py <args>`` in this process, its output into the log; the CLI object."""
    print(f"\n$ main.py {shlex.join(args)}", file=ctx.log, flush=True)
    with contextlib.redirect_stdout(ctx.log), contextlib.redirect_stderr(ctx.log):
        return cli_main(args)


def throughput_args(ctx: Context, **overrides) -> argparse.Namespace:
    """``train_throughput.py``'s options for this run's device and sizes."""
    s = ctx.sizes
    args = train_throughput.parse_args([
        "--data-dir", str(ctx.data_dir), "--device", ctx.device, "--steps", str(s.steps), "--warmup", str(s.warmup),
        "--image-size", str(s.image_size), "--batch-size", str(s.batch_size), "--cli-args", shlex.join(s.cli_sizes),
        "--compile-backend", s.compile_backend,
    ])  # fmt: skip
    vars(args).update(overrides)
    return args


def seed_flops(args: argparse.Namespace, class_names: list[str]) -> tuple:
    """The recipes entry of variants a and b: (px, batch, forward and training-step FLOPs per image)."""
    from gem_lightning.training.module import GemClassifier

    model = GemClassifier(class_names, args.image_size)
    return (args.image_size, args.batch_size, *train_throughput.flops_per_image(model, args.image_size, args.batch_size))


def fmt(value) -> str:
    """A table cell or figure as text: floats to 4 significant digits, dicts as ``key value`` pairs."""
    if isinstance(value, float):
        return "–" if math.isnan(value) else f"{value:.4g}" if abs(value) < 1e4 else f"{value:.0f}"
    if isinstance(value, dict):
        return ", ".join(f"{k} {fmt(v)}" for k, v in value.items())
    return str(value)


# Steps ------------------------------------------------------------------------------------------


def step_environment(ctx: Context, result: StepResult) -> None:
    import lightning

    f = result.figures
    f.update(
        torch=torch.__version__,
        lightning=lightning.__version__,
        python=platform.python_version(),
        cpu_cores=os.cpu_count(),
        torch_threads=torch.get_num_threads(),
        device=ctx.device,
    )
    if ctx.cuda:
        props = torch.cuda.get_device_properties(0)
        f.update(
            gpu=props.name,
            capability=f"{props.major}.{props.minor}",
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            multiprocessors=props.multi_processor_count,
            cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
            nccl=str(torch.cuda.nccl.version()),
            bf16_supported=torch.cuda.is_bf16_supported(),
        )
    else:
        result.skipped.append("GPU properties: no CUDA device (dry run on the CPU)")
    n = ctx.sizes.matmul_n
    for dtype in (torch.bfloat16, torch.float32):
        rate = train_throughput.matmul_rate(dtype, reps=10, n=n, device=ctx.device)
        f[f"matmul_{str(dtype).split('.')[-1]}_tflops"] = rate / 1e12
    f["matmul_n"] = n


def step_cuda_tests(ctx: Context, result: StepResult) -> None:
    if not ctx.cuda:
        raise Skipped("needs a CUDA GPU (the tests marked cuda skip themselves without one)")
    command = [sys.executable, "-m", "pytest", "-m", "cuda", "-q", "-p", "no:cacheprovider", "tests"]
    done = run_subprocess(command, ctx, timeout=remaining_budget())
    summary = next(
        (line for line in reversed(done.stdout.splitlines()) if re.search(r"\d+ (passed|failed|skipped|error)", line)), "no summary"
    )
    result.figures.update(command=shlex.join(command[1:]), exit_status=done.returncode, summary=summary.strip("= "))
    for outcome in ("passed", "failed", "skipped", "error"):
        match = re.search(rf"(\d+) {outcome}", summary)
        result.figures[outcome] = int(match.group(1)) if match else 0
    if done.returncode != 0:
        raise RuntimeError(f"pytest -m cuda: {summary.strip('= ')} (exit status {done.returncode}); the log has the output")


def step_cli(ctx: Context, result: StepResult) -> None:
    """fit (every precision x augment_on), then validate, test and predict (augment_on loader)."""
    table = result.table(
        f"CLI on {ctx.data_dir}: configs/gemstones.yaml, channels-last, 1 epoch",
        ["precision", "augment_on", "command", "status", "seconds", "figures"],
    )
    precisions = ["16-mixed", "bf16-mixed"]
    if not ctx.cuda:
        precisions.remove("16-mixed")
        result.skipped.append("16-mixed: fp16 AMP runs only on CUDA (on the CPU Lightning turns it into bf16-mixed)")
    failures = []
    for precision in precisions:
        for augment_on in ("loader", "device"):
            name = f"{precision}-{augment_on}"
            common = ["--config", str(CONFIGS / "gemstones.yaml"), "--data.data_dir", str(ctx.data_dir),
                      "--trainer.accelerator", ctx.accelerator, "--trainer.precision", precision, "--model.channels_last", "true",
                      "--trainer.enable_progress_bar", "false", "--trainer.logger.init_args.save_dir", str(ctx.work / "runs"),
                      "--trainer.logger.init_args.name", name, *ctx.sizes.cli_sizes, *ctx.sizes.cli_limits]  # fmt: skip
            commands = {"fit": ["fit", *common, "--data.augment_on", augment_on, "--trainer.max_epochs", "1",
                                "--checkpoint.dirpath", str(ctx.work / name)]}  # fmt: skip
            if augment_on == "loader":
                ckpt = str(ctx.work / name / "last.ckpt")
                predictions = ctx.work / f"{name}-predictions.csv"
                commands.update(
                    validate=["validate", *common, "--ckpt_path", ckpt],
                    test=["test", *common, "--ckpt_path", ckpt],
                    predict=["predict", *common, "--ckpt_path", ckpt, "--data.predict_path", str(ctx.data_dir / "test"),
                             "--predictions.output", str(predictions)],
                )  # fmt: skip
            for command, args in commands.items():
                if ctx.cuda:
                    torch.cuda.reset_peak_memory_stats()
                start = time.perf_counter()
                try:
                    cli = run_cli(ctx, args)
                    figures = cli_figures(ctx, cli, command, predictions if command == "predict" else None)
                    status = "ok"
                except (Exception, SystemExit) as error:  # the next command still runs; the log has the traceback
                    traceback.print_exc(file=ctx.log)
                    figures, status = {"error": f"{type(error).__name__}: {error}"[:300]}, "failed"
                    failures.append(f"{command} {name}")
                seconds = time.perf_counter() - start
                table.rows.append([precision, augment_on, command, status, round(seconds, 1), figures])
                print(f"  cli {command:<8} {precision:<10} augment_on={augment_on:<6} {status} in {seconds:.1f} s {figures}", flush=True)
    if failures:
        raise RuntimeError(f"failed: {', '.join(failures)}")


def cli_figures(ctx: Context, cli, command: str, predictions: Path | None) -> dict:
    """What shows that the command ran where and how it was asked to."""
    trainer, model = cli.trainer, cli.model
    metrics = {k: round(float(v), 4) for k, v in trainer.callback_metrics.items() if k in ("train/loss_epoch", "val/acc", "test/acc")}
    conv = next(p for p in model.parameters() if p.dim() == 4)
    figures = {
        "device": str(trainer.strategy.root_device),
        "precision": trainer.precision,
        "channels_last": conv.is_contiguous(memory_format=torch.channels_last),
        **metrics,
    }
    if command == "fit":
        figures["steps"] = trainer.global_step
        figures["grad_scaler"] = getattr(trainer.precision_plugin, "scaler", None) is not None
        figures["augment_on"] = cli.datamodule.augment_on
    if predictions is not None:
        figures["rows"] = sum(1 for _ in predictions.open()) - 1
    if ctx.cuda:
        figures["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return figures


def step_throughput(ctx: Context, result: StepResult) -> None:
    """Variants a, b, c_seed, c alternating over rounds; ratios to a within this run."""
    args = throughput_args(ctx, augment_on="loader")
    datamodule = train_throughput.make_datamodule(args)
    recipes = {"a": seed_flops(args, datamodule.class_names)}
    recipes["b"] = recipes["a"]
    runners = {
        "a": lambda: train_throughput.run_plain(args, datamodule),
        "b": lambda: train_throughput.run_lightning(args, datamodule, lean=True),
        "c_seed": lambda: train_throughput.run_cli(args, "c_seed", recipes),
        "c": lambda: train_throughput.run_cli(args, "c", recipes),
    }
    runs: dict[str, list[dict]] = {v: [] for v in runners}
    for round_ in range(ctx.sizes.rounds):
        for variant in list(runners) if round_ % 2 == 0 else list(runners)[::-1]:
            stats = runners[variant]().stats(args.warmup)
            runs[variant].append(stats)
            print(f"  throughput round {round_ + 1} {variant:>6}: {stats['mean']:8.1f} images/s, waiting {stats['wait']:.1%}", flush=True)
    ceiling = ctx.results["environment"].figures.get("matmul_bfloat16_tflops", float("nan")) * 1e12
    table = result.table(
        f"Training throughput, {ctx.device}, augmentation in the loader, {datamodule.loader.workers} loader workers, "
        f"{args.steps} steps after {args.warmup}, median of {ctx.sizes.rounds} rounds",
        [
            "variant",
            "px, batch",
            "images/s",
            "median step images/s",
            "/ a",
            "GFLOP/s",
            "/ a (FLOP/s)",
            "share of bf16 matmul",
            "waiting",
            "images/s inside steps",
        ],
    )
    a_rate = median(r["mean"] for r in runs["a"])
    a_gflops = a_rate * recipes["a"][3] / 1e9
    for variant, stats in runs.items():
        size, batch, _, step_flops = recipes[variant]
        rate = median(r["mean"] for r in stats)
        gflops = rate * step_flops / 1e9
        same_recipe = recipes[variant][:2] == recipes["a"][:2]
        table.rows.append([variant, f"{size}, {batch}", round(rate, 1), round(median(r["median"] for r in stats), 1),
                           round(rate / a_rate, 3) if same_recipe else "–", round(gflops), round(gflops / a_gflops, 3),
                           "–" if math.isnan(ceiling) else f"{gflops * 1e9 / ceiling:.1%}", f"{median(r['wait'] for r in stats):.1%}",
                           round(median(r["busy"] for r in stats), 1)])  # fmt: skip
    result.figures["gflop_per_image_training_step"] = {v: round(r[3] / 1e9, 3) for v, r in recipes.items()}


def step_data_wait(ctx: Context, result: StepResult) -> None:
    """Per recipe x augment_on x loader workers: the loader alone, and training through the CLI."""
    table = result.table(
        f"Waiting for data, {ctx.device}: loader alone ({ctx.sizes.loader_batches} batches) and training through the CLI "
        f"({ctx.sizes.wait_steps} steps after {ctx.sizes.warmup})",
        ["recipe", "augment_on", "workers", "loader alone images/s", "training images/s", "waiting", "images/s inside steps"],
    )
    recipes: dict = {}
    for variant in ("c_seed", "c"):
        for augment_on in ("loader", "device"):
            args = throughput_args(ctx, augment_on=augment_on, steps=ctx.sizes.wait_steps)
            datamodule = config_datamodule(ctx, variant, augment_on)
            for workers in ctx.sizes.workers:
                datamodule.loader = dataclasses.replace(datamodule.loader, num_workers=workers)
                images, seconds = data_pipeline.timed_pass(datamodule.train_dataloader(), ctx.sizes.loader_batches)
                args.num_workers = workers
                stats = train_throughput.run_cli(args, variant, recipes).stats(args.warmup)
                table.rows.append([variant, augment_on, workers, round(images / seconds, 1), round(stats["mean"], 1),
                                   f"{stats['wait']:.1%}", round(stats["busy"], 1)])  # fmt: skip
                print(
                    f"  data_wait {variant:>6} {augment_on:<6} {workers:>2} workers: loader {images / seconds:8.1f} images/s, "
                    f"training {stats['mean']:8.1f} images/s, waiting {stats['wait']:.1%}",
                    flush=True,
                )


def config_datamodule(ctx: Context, variant: str, augment_on: str):
    """The data module a config builds through the CLI (its image size, batch, augmentation), set up for fit."""
    with contextlib.redirect_stdout(ctx.log), contextlib.redirect_stderr(ctx.log):
        cli = cli_main(["--config", str(train_throughput.CONFIGS[variant]), "--data.data_dir", str(ctx.data_dir),
                        "--data.augment_on", augment_on, "--trainer.logger", "false", *ctx.sizes.cli_sizes], run=False)  # fmt: skip
        cli.datamodule.prepare_data()
        cli.datamodule.setup("fit")
    return cli.datamodule


def step_predict(ctx: Context, result: StepResult) -> None:
    args = predict_throughput.parse_args(["--data-dir", str(ctx.data_dir), "--device", ctx.device])
    folder = ctx.data_dir / "test"
    files = find_predict_files(str(folder))
    ckpt = predict_throughput.untrained_checkpoint(ctx.data_dir, ctx.work / "untrained.ckpt")
    runners = {
        "cli": lambda r: predict_throughput.run_cli(args, ckpt, folder, ctx.work / f"predict-cli-{r}"),
        "trainer": lambda r: predict_throughput.run_trainer(args, ckpt, folder),
        "plain": lambda r: predict_throughput.run_plain(ckpt, files, ctx.device),
    }
    totals: dict[str, list[float]] = {name: [] for name in runners}
    steady: dict[str, list[float]] = {name: [] for name in runners}
    for r in range(ctx.sizes.predict_rounds):
        for name in list(runners) if r % 2 == 0 else list(runners)[::-1]:
            seconds, rate = runners[name](r)
            totals[name].append(seconds)
            steady[name].append(rate)
            print(f"  predict round {r + 1} {name:>7}: {len(files) / seconds:8.1f} images/s end to end", flush=True)
    table = result.table(
        f"Prediction over {len(files)} photos of test/, {ctx.device}, batch 32, bf16-mixed, untrained seed network "
        f"(median of {ctx.sizes.predict_rounds} rounds)",
        ["path", "seconds", "images/s end to end", "/ plain", "images/s after the first batch"],
    )
    plain = len(files) / median(totals["plain"])
    for name in runners:
        rate = len(files) / median(totals[name])
        table.rows.append([name, round(median(totals[name]), 2), round(rate, 1), round(rate / plain, 3), round(median(steady[name]), 1)])


def step_ddp(ctx: Context, result: StepResult) -> None:
    """``fit`` under DDP with one device, in a fresh process (the process group stays out of this one)."""
    if not ctx.cuda:
        result.skipped.append("NCCL: needs CUDA GPUs; the dry run uses gloo on the CPU (configs/ddp_cpu.yaml)")
        result.skipped.append("SyncBatchNorm: runs only on GPUs (configs/ddp_cpu.yaml sets sync_batchnorm: false)")
    out = ctx.work / "ddp-probe.json"
    command = [sys.executable, str(Path(__file__).resolve()), "--ddp-probe", str(out), "--data-dir", str(ctx.data_dir)]
    done = run_subprocess(command + (["--dry-run"] if not ctx.cuda else []), ctx, timeout=min(180, remaining_budget()))
    if not out.is_file():
        raise RuntimeError(f"the DDP probe exited with status {done.returncode} and wrote no figures; the log has its output")
    result.figures.update(json.loads(out.read_text()))
    result.figures["unverified"] = (
        "several GPUs in one machine (NCCL over NVLink/PCIe, DistributedSampler shards, "
        "rank-zero outputs on GPUs) and several machines (NCCL over the network, SLURM/torchrun on GPU nodes)"
    )
    if done.returncode != 0:
        raise RuntimeError(f"the DDP probe exited with status {done.returncode}")


def ddp_probe(args: argparse.Namespace) -> None:
    """The ddp step's fresh process: one ``fit`` under DDP on one device; figures into ``args.ddp_probe``."""
    import torch.distributed as dist
    from lightning.pytorch import Callback
    from torch.nn.parallel import DistributedDataParallel

    train_throughput.quiet()
    figures: dict = {}
    init = dist.init_process_group

    def timed_init(*a, **k):  # Lightning calls torch.distributed.init_process_group
        start = time.perf_counter()
        init(*a, **k)
        figures["init_process_group_s"] = round(time.perf_counter() - start, 3)

    dist.init_process_group = timed_init

    class Probe(Callback):
        def on_train_start(self, trainer, pl_module) -> None:
            modules = list(pl_module.modules())
            figures.update(backend=dist.get_backend(), world_size=dist.get_world_size(), device=str(pl_module.device),
                           wrapper=type(trainer.strategy.model).__name__,
                           ddp_wrapped=isinstance(trainer.strategy.model, DistributedDataParallel),
                           sync_batchnorm_layers=sum(isinstance(m, torch.nn.SyncBatchNorm) for m in modules),
                           batchnorm_layers=sum(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in modules))  # fmt: skip

        def on_train_end(self, trainer, pl_module) -> None:
            value = torch.ones(1, device=pl_module.device)
            train_throughput.synchronize()
            start = time.perf_counter()
            dist.all_reduce(value)
            train_throughput.synchronize()
            figures.update(
                all_reduce_ms=round((time.perf_counter() - start) * 1e3, 3), all_reduce_sum=value.item(), steps=trainer.global_step
            )

    sizes = DRY_SIZES if args.dry_run else GPU_SIZES
    config = CONFIGS / ("ddp_cpu.yaml" if args.dry_run else "ddp_gpu.yaml")
    with tempfile.TemporaryDirectory(prefix="gem-ddp-probe-") as work:
        cli = cli_main(["--config", str(CONFIGS / "gemstones.yaml"), "--config", str(config), "--data.data_dir", str(args.data_dir),
                        "--trainer.devices", "1", "--trainer.max_steps", str(sizes.ddp_steps), "--trainer.limit_val_batches", "2",
                        "--trainer.enable_progress_bar", "false", "--trainer.logger.init_args.save_dir", work,
                        "--checkpoint.dirpath", work, *sizes.cli_sizes], run=False)  # fmt: skip
        cli.trainer.callbacks.append(Probe())
        figures["config"] = f"configs/gemstones.yaml + configs/{config.name}, trainer.devices 1"
        start = time.perf_counter()
        try:
            cli.trainer.fit(cli.model, cli.datamodule)
        finally:
            figures["fit_s"] = round(time.perf_counter() - start, 2)
            args.ddp_probe.write_text(json.dumps(figures, indent=1))


def step_compile(ctx: Context, result: StepResult) -> None:
    """Variants a and b with and without ``nn.Module.compile()``: first step apart from the steady rate."""
    args = throughput_args(ctx, augment_on="loader")
    datamodule = train_throughput.make_datamodule(args)
    table = result.table(
        f"torch.compile (backend {args.compile_backend}), {ctx.device}, seed recipe, {args.steps} steps after {args.warmup} "
        "(b compiles after a: it may reuse a's cached kernels)",
        ["variant", "compiled", "first step s", "compile s (first step minus the uncompiled one's)", "images/s", "/ not compiled"],
    )
    for variant in ("a", "b"):
        uncompiled = {}
        for compiled in (False, True):
            args.compiled = compiled
            run = (
                train_throughput.run_plain(args, datamodule)
                if variant == "a"
                else train_throughput.run_lightning(args, datamodule, lean=True)
            )
            stats = run.stats(args.warmup)
            uncompiled = uncompiled or stats
            compile_s = round(stats["first"] - uncompiled["first"], 2) if compiled else "–"
            table.rows.append([variant, compiled, round(stats["first"], 2), compile_s,
                               round(stats["mean"], 1), round(stats["mean"] / uncompiled["mean"], 3)])  # fmt: skip
            print(f"  compile {variant} compiled={compiled}: first step {stats['first']:.1f} s, {stats['mean']:.1f} images/s", flush=True)


STEPS: dict[str, Callable[[Context, StepResult], None]] = {
    "environment": step_environment,
    "cuda_tests": step_cuda_tests,
    "cli": step_cli,
    "throughput": step_throughput,
    "data_wait": step_data_wait,
    "predict": step_predict,
    "ddp": step_ddp,
    "compile": step_compile,
}


# Budget, subprocesses, output -------------------------------------------------------------------

DEADLINE = math.inf


def remaining_budget() -> float:
    return DEADLINE - time.monotonic()


def on_alarm(signum, frame) -> None:
    raise OutOfBudget()


def run_subprocess(command: list[str], ctx: Context, timeout: float) -> subprocess.CompletedProcess:
    """``command`` in its own process group, output into the log; the whole group is killed at ``timeout``."""
    print(f"\n$ {shlex.join(command)}", file=ctx.log, flush=True)
    proc = subprocess.Popen(
        command, cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        output, _ = proc.communicate(timeout=max(1.0, timeout))
    except (subprocess.TimeoutExpired, OutOfBudget) as stop:
        os.killpg(proc.pid, signal.SIGKILL)
        ctx.log.write(proc.communicate()[0])
        if isinstance(stop, OutOfBudget):
            raise
        raise TimeoutError(f"{shlex.join(command[1:3])} ... did not finish within {timeout:.0f} s; killed") from None
    ctx.log.write(output)
    return subprocess.CompletedProcess(command, proc.returncode, output, None)


def run_step(name: str, ctx: Context) -> StepResult:
    result = ctx.results[name] = StepResult()
    if remaining_budget() < MIN_STEP_S:
        result.status, result.reason = "out of budget", f"not started: {max(0, remaining_budget()):.0f} s of the time budget left"
        return result
    print(f"[{name}] ...", flush=True)
    start = time.perf_counter()
    if math.isfinite(DEADLINE):
        signal.alarm(max(1, int(remaining_budget())))
    try:
        STEPS[name](ctx, result)
        result.status = "ok"
    except Skipped as reason:
        result.status, result.reason = "skipped", str(reason)
    except OutOfBudget:
        result.status, result.reason = "out of budget", "stopped when the time budget ran out; the figures are those it had"
    except Exception as error:
        traceback.print_exc(file=ctx.log)
        result.status, result.reason = "failed", f"{type(error).__name__}: {error}"[:500]
    finally:
        signal.alarm(0)
        result.seconds = round(time.perf_counter() - start, 1)
    print(f"[{name}] {result.status} in {result.seconds} s{': ' + result.reason if result.reason else ''}", flush=True)
    return result


def render_markdown(meta: dict, results: dict[str, StepResult]) -> str:
    lines = [f"# GPU check, {meta['started']}", "", f"`{meta['command']}`", ""]
    if meta["dry_run"]:
        lines += ["**Dry run on the CPU, small sizes: these figures check the script and say nothing about a GPU.**", ""]
    lines += ["| step | status | seconds | note |", "|---|---|---|---|"]
    lines += [f"| {name} | {r.status} | {r.seconds} | {r.reason} |" for name, r in results.items()]
    for name, r in results.items():
        lines += ["", f"## {name}: {r.status}", ""]
        if r.reason:
            lines += [r.reason, ""]
        lines += [f"- {key}: {fmt(value)}" for key, value in r.figures.items()]
        lines += [f"- skipped: {part}" for part in r.skipped]
        for table in r.tables:
            lines += ["", f"{table.title}:", "", "| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
            for row in table.rows:
                lines.append("| " + " | ".join(fmt(cell) for cell in row) + " |")
    return "\n".join(lines) + "\n"


def output_path(out: Path, extension: str) -> Path:
    return out.with_name(f"{out.name}.{extension}")


def write_results(out: Path, meta: dict, results: dict[str, StepResult]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"meta": meta, "steps": {name: asdict(r) for name, r in results.items()}}
    for path, text in (
        (output_path(out, "json"), json.dumps(payload, indent=1, default=str)),
        (output_path(out, "md"), render_markdown(meta, results)),
    ):
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text)
        tmp.replace(path)


def main(argv=None) -> int:
    global DEADLINE
    args = parse_args(argv)
    train_throughput.quiet()
    if args.ddp_probe:
        ddp_probe(args)
        return 0
    device = "cpu" if args.dry_run else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        print("error: no CUDA GPU is visible to torch; run with --dry-run to check the script on the CPU.", file=sys.stderr)
        return 2
    if not (args.data_dir / "train").is_dir():
        print(
            f"error: {args.data_dir}/train does not exist: give --data-dir a folder with train/<Class>/ and test/<Class>/ photos.",
            file=sys.stderr,
        )
        return 2
    budget = args.budget if args.budget is not None else (math.inf if args.dry_run else 330.0)
    DEADLINE = time.monotonic() + budget
    previous_handler = signal.signal(signal.SIGALRM, on_alarm)
    steps = [s for s in STEPS if not args.only or s in args.only.split(",")]
    if "environment" not in steps:
        steps.insert(0, "environment")  # throughput needs its matmul ceiling
    meta = {
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "command": shlex.join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "dry_run": args.dry_run,
        "budget_s": budget,
        "data_dir": str(args.data_dir),
        "sizes": asdict(DRY_SIZES if args.dry_run else GPU_SIZES),
    }
    results: dict[str, StepResult] = {}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="gem-gpu-check-") as work, output_path(args.out, "log").open("w") as log:
        ctx = Context(args.data_dir.resolve(), device, DRY_SIZES if args.dry_run else GPU_SIZES, Path(work), log, results)
        start = time.perf_counter()
        try:
            for name in steps:
                run_step(name, ctx)
                meta["seconds"] = round(time.perf_counter() - start, 1)
                write_results(args.out, meta, results)
        finally:
            signal.signal(signal.SIGALRM, previous_handler)
    print(
        f"\n{render_markdown(meta, results)}\n"
        f"wrote {output_path(args.out, 'json')}, {output_path(args.out, 'md')}, {output_path(args.out, 'log')}"
    )
    return 0 if all(r.status in ("ok", "skipped") for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())

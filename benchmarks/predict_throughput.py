"""Prediction throughput over a folder of photos, and the latency of the Python API.

Run from the repository root (prints figures; not a test):

    python benchmarks/predict_throughput.py [--data-dir ../shared/datasets/gemstones] [--ckpt CKPT]
        [--rounds 3] [--warm-calls 20] [--device cpu|cuda]

Over every photo of ``<data-dir>/test`` (440 files), with the checkpoint ``--ckpt``, else an
untrained ``GemClassifier`` at 220 px (the seed's network) saved to a temporary checkpoint (speed
does not depend on the weights), bf16-mixed autocast as the configs set it, on ``--device``:

(cli)     ``cli_main(["predict", "--config", CONFIG, "--ckpt_path", ...])`` (``--config``, default
          ``configs/gemstones_seed.yaml``, whose decoding matches the untrained checkpoint), in this
          process, end to end: config parsing, model rebuilt from the checkpoint, decoding in the
          DataLoader worker(s), batches of 32, predictions CSV written;
(trainer) ``Trainer.predict`` of ``GemClassifier.load_from_checkpoint`` over ``GemDataModule``'s
          predict loader, timed from the call to its return;
(plain)   a loop written here: decode + squeeze to the cache size (``DecodeSettings.decode``, as
          ``predict`` does), evaluation resize, batches of 32, ``model.predict_proba`` top-5 in
          inference mode, one process, no DataLoader.

Printed: seconds and images/s end to end (setup included) and, for trainer and plain, images/s
from the end of the first batch to the end of the last.

The three alternate for ``--rounds`` rounds (median printed, ratios to plain). Then, in a fresh
Python process each time: ``gem_lightning.inference.api.load_model(ckpt)`` and its first ``classify`` (cold),
and the median of ``--warm-calls`` further calls (warm), on one photo; ``--api-threads 2,1``
alternates the probe's torch thread count.

``--runtimes torch onnxruntime onnxruntime-int8`` compares runtimes instead, in one run: the CLI path
with ``--inference.runtime`` each (ONNX models exported, and int8 quantized on ``--int8-images``,
once before timing: what every later ``predict`` of the checkpoint finds cached), alternating for
``--rounds`` rounds, end-to-end images/s and the ratio to torch; then, in this process, the photos
decoded once (``Preprocessing``, one thread: ms per photo) and the decoded batches of 32 through each
runtime (``load_model(ckpt, runtime=...).predict_proba``, the checkpoint's TTA, bf16 autocast for
torch when the config says bf16: ms per photo), and decoding's share of decode + forward.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
from lightning.pytorch import Callback, Trainer

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from gem_lightning.cli.app import cli_main  # noqa: E402
from gem_lightning.data.cache import DecodeSettings  # noqa: E402
from gem_lightning.data.datamodule import GemDataModule  # noqa: E402
from gem_lightning.data.datasets import find_predict_files  # noqa: E402
from gem_lightning.data.transforms import cache_size_for, eval_transform  # noqa: E402
from gem_lightning.errors import UserInputError  # noqa: E402
from gem_lightning.inference.api import load_model  # noqa: E402
from gem_lightning.inference.preprocessing import Preprocessing  # noqa: E402
from gem_lightning.inference.runtime import RUNTIMES, prepare  # noqa: E402
from gem_lightning.training.module import GemClassifier  # noqa: E402

BATCH_SIZE = 32

API_PROBE = r"""
import json, statistics, sys, time
import torch
if int(sys.argv[4]):
    torch.set_num_threads(int(sys.argv[4]))
start = time.perf_counter()
try:
    from gem_lightning.inference.api import load_model
except ImportError as error:
    print(json.dumps({"missing": str(error)})); sys.exit(0)
imported = time.perf_counter()
model = load_model(sys.argv[1])
loaded = time.perf_counter()
first = model.classify(sys.argv[2])
classified = time.perf_counter()
warm = []
for _ in range(int(sys.argv[3])):
    t = time.perf_counter(); model.classify(sys.argv[2]); warm.append(time.perf_counter() - t)
print(json.dumps({"threads": torch.get_num_threads(), "import_s": imported - start, "load_s": loaded - imported,
                  "first_classify_s": classified - loaded, "warm_median_s": statistics.median(warm), "warm_min_s": min(warm),
                  "top1": first[0][0]}))
"""


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "datasets" / "gemstones")
    parser.add_argument("--ckpt", type=Path, default=None, help="a trained checkpoint (default: an untrained model's)")
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "gemstones_seed.yaml", help="config of the CLI path")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warm-calls", type=int, default=20)
    parser.add_argument("--api-runs", type=int, default=3, help="fresh processes for the API latency, per thread count")
    parser.add_argument("--api-threads", default="0", help="torch threads in the API probe, e.g. 2,1 (0: torch's default)")
    parser.add_argument(
        "--device", choices=("cpu", "cuda"), default="cpu", help="of trainer and plain; the CLI uses its config's accelerator (auto)"
    )
    parser.add_argument("--runtimes", nargs="+", choices=RUNTIMES, default=None, help="compare predict with these runtimes instead")
    parser.add_argument(
        "--int8-images", default=None, help="onnxruntime-int8's calibration photos (a folder or glob; needed once per checkpoint)"
    )
    return parser.parse_args(argv)


@contextlib.contextmanager
def hidden_output():
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull), contextlib.redirect_stderr(devnull):
        yield


def untrained_checkpoint(data_dir: Path, path: Path) -> Path:
    """A checkpoint ``GemClassifier.load_from_checkpoint`` and ``predict --ckpt_path`` accept."""
    model = GemClassifier(GemDataModule(str(data_dir)).class_names, 220)
    trainer = Trainer(
        accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False
    )
    trainer.strategy.connect(model)
    trainer.save_checkpoint(path)
    return path


def run_cli(args, ckpt: Path, folder: Path, out: Path, runtime: str = "torch") -> float:
    start = time.perf_counter()
    with hidden_output():
        cli_main(
            [
                "predict",
                "--config",
                str(args.config),
                "--ckpt_path",
                str(ckpt),
                "--data.data_dir",
                str(args.data_dir),
                "--data.predict_path",
                str(folder),
                "--trainer.logger",
                "false",
                "--trainer.default_root_dir",
                str(out),
                "--predictions.output",
                str(out / "predictions.csv"),
                "--inference.runtime",
                runtime,
            ]
        )
    seconds = time.perf_counter() - start
    assert (out / "predictions.csv").is_file(), "the CLI wrote no predictions"
    return seconds, float("nan")


class BatchClock(Callback):
    def __init__(self) -> None:
        self.ends: list[tuple[float, int]] = []

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self.ends.append((time.perf_counter(), len(batch["path"])))


def steady_rate(ends: list[tuple[float, int]]) -> float:
    """Images per second from the end of the first batch to the end of the last."""
    return sum(n for _, n in ends[1:]) / (ends[-1][0] - ends[0][0]) if len(ends) > 1 else float("nan")


def run_trainer(args, ckpt: Path, folder: Path) -> tuple[float, float]:
    start, clock = time.perf_counter(), BatchClock()
    with hidden_output():
        model = GemClassifier.load_from_checkpoint(ckpt, map_location="cpu")
        datamodule = GemDataModule(str(args.data_dir), image_size=model.hparams.image_size, batch_size=BATCH_SIZE, predict_path=str(folder))
        trainer = Trainer(
            accelerator=args.device,
            devices=1,
            precision="bf16-mixed",
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            callbacks=[clock],
        )
        outputs = trainer.predict(model, datamodule=datamodule)
    assert sum(len(o["predictions"]) for o in outputs) > 0
    return time.perf_counter() - start, steady_rate(clock.ends)


def run_plain(ckpt: Path, files: list[Path], device: str = "cpu") -> tuple[float, float]:
    start, ends = time.perf_counter(), []
    model = GemClassifier.load_from_checkpoint(ckpt, map_location=device).eval()
    size = model.hparams.image_size
    settings, resize = DecodeSettings(cache_size_for(size)), eval_transform(size)
    rows = 0
    with torch.inference_mode(), torch.autocast(device, dtype=torch.bfloat16):
        for first in range(0, len(files), BATCH_SIZE):
            images = torch.stack(
                [resize(torch.from_numpy(settings.decode(p)).permute(2, 0, 1)) for p in files[first : first + BATCH_SIZE]]
            ).to(device)
            _, labels = model.predict_proba(images).topk(min(5, model.num_classes), dim=-1)
            rows += len(labels.tolist())
            ends.append((time.perf_counter(), len(images)))
    assert rows == len(files)
    return time.perf_counter() - start, steady_rate(ends)


def api_latency(args, ckpt: Path, image: Path) -> list[dict]:
    """Fresh processes, thread counts alternating run by run."""
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONWARNINGS="ignore")
    runs = []
    for _, threads in ((r, t) for r in range(args.api_runs) for t in args.api_threads.split(",")):
        done = subprocess.run(
            [sys.executable, "-c", API_PROBE, str(ckpt), str(image), str(args.warm_calls), threads],
            capture_output=True,
            text=True,
            env=env,
            cwd=REPO,
        )
        if done.returncode != 0:
            print(done.stderr[-2000:])
            raise SystemExit("the API probe failed")
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
        if "missing" in runs[-1]:
            break
    return runs


def main(argv=None) -> None:
    args = parse_args(argv)
    warnings.filterwarnings("ignore")
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    folder = args.data_dir / "test"
    files = find_predict_files(str(folder))
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}; "
        f"{len(files)} files in {folder}; batch {BATCH_SIZE}, bf16-mixed"
    )
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = args.ckpt or untrained_checkpoint(args.data_dir, Path(tmp) / "untrained.ckpt")
        untrained = "untrained GemClassifier(class_names, 220), saved via Trainer.save_checkpoint"
        print(f"checkpoint: {ckpt if args.ckpt else untrained}; CLI config {args.config}")
        if args.runtimes:
            compare_runtimes(args, ckpt, folder, files, Path(tmp))
            return
        runners = {
            "cli": lambda r: run_cli(args, ckpt, folder, Path(tmp) / f"cli{r}"),
            "trainer": lambda r: run_trainer(args, ckpt, folder),
            "plain": lambda r: run_plain(ckpt, files, args.device),
        }
        seconds: dict[str, list[float]] = {name: [] for name in runners}
        steady: dict[str, list[float]] = {name: [] for name in runners}
        for r in range(args.rounds):
            for name in list(runners) if r % 2 == 0 else list(runners)[::-1]:
                total, rate = runners[name](r)
                seconds[name].append(total)
                steady[name].append(rate)
                after_first = "" if math.isnan(rate) else f"; after the first batch {rate:6.1f} images/s"
                print(f"round {r + 1} {name:>7}: {total:6.2f} s = {len(files) / total:6.1f} images/s end to end{after_first}", flush=True)
        rates = {name: len(files) / statistics.median(s) for name, s in seconds.items()}
        print("\nmedian images/s, end to end (setup included): " + ", ".join(f"{n} {v:.1f}" for n, v in rates.items()))
        print(f"  cli/plain {rates['cli'] / rates['plain']:.3f}, trainer/plain {rates['trainer'] / rates['plain']:.3f}")
        if len(files) > BATCH_SIZE:
            inner = {name: statistics.median(v) for name, v in steady.items() if name != "cli"}
            print(
                "median images/s after the first batch: "
                + ", ".join(f"{n} {v:.1f}" for n, v in inner.items())
                + f"; trainer/plain {inner['trainer'] / inner['plain']:.3f}"
            )

        print(f"\ngem_lightning.inference.api, fresh process each run, one photo ({files[0].name}):")
        for run in api_latency(args, ckpt, files[0]):
            if "missing" in run:
                print(f"  skipped: gem_lightning.inference.api is not importable ({run['missing']})")
                break
            cold = run["load_s"] + run["first_classify_s"]
            print(
                f"  {run['threads']} thread(s): import {run['import_s']:.2f} s, load_model {run['load_s']:.2f} s, "
                f"first classify {run['first_classify_s'] * 1e3:.0f} ms (cold: {cold:.2f} s after import), "
                f"warm classify median {run['warm_median_s'] * 1e3:.1f} ms (min {run['warm_min_s'] * 1e3:.1f})"
            )


def compare_runtimes(args, ckpt: Path, folder: Path, files: list[Path], tmp: Path) -> None:
    """``predict`` end to end with each of ``args.runtimes``; decoding and forward time per photo; decoding's share."""
    for runtime in list(args.runtimes):
        try:
            with hidden_output():
                prepare(ckpt, runtime, args.int8_images)  # export / quantize once: later predicts find it cached
        except UserInputError as refused:
            print(f"{runtime} left out: {refused}")
            args.runtimes.remove(runtime)
    seconds: dict[str, list[float]] = {runtime: [] for runtime in args.runtimes}
    for r in range(args.rounds):
        for runtime in args.runtimes if r % 2 == 0 else args.runtimes[::-1]:
            total, _ = run_cli(args, ckpt, folder, tmp / f"{runtime}{r}", runtime)
            seconds[runtime].append(total)
            print(f"round {r + 1} {runtime:>16}: {total:6.2f} s = {len(files) / total:6.1f} images/s end to end (cli)", flush=True)
    decode_ms, images = decode_photos(ckpt, files)
    bf16 = "bf16" in str(yaml_value(args.config, "trainer", "precision") or "")
    print(f"\ndecoding (Preprocessing, one thread, this process): {decode_ms:.2f} ms a photo\n")
    print(f"{'runtime':>16} {'cli images/s':>12} {'vs torch':>8} {'forward ms/photo':>16} {'decode share':>12}")
    base = len(files) / statistics.median(seconds[args.runtimes[0]])
    for runtime in args.runtimes:
        rate = len(files) / statistics.median(seconds[runtime])
        forward_ms = forward_per_photo(ckpt, runtime, images, bf16 and runtime == "torch")
        print(
            f"{runtime:>16} {rate:>12.1f} {rate / base:>7.2f}x {forward_ms:>16.2f} {100 * decode_ms / (decode_ms + forward_ms):>11.1f}%",
            flush=True,
        )
    print(
        f"(ratios to {args.runtimes[0]}; median of {args.rounds} rounds; "
        f"forward with the checkpoint's TTA{', torch under bf16 autocast' if bf16 else ''})"
    )


def yaml_value(config: Path, *keys: str):
    """A value of a YAML config (None if absent)."""
    import yaml

    value = yaml.safe_load(config.read_text())
    for key in keys:
        value = value.get(key) if isinstance(value, dict) else None
    return value


def decode_photos(ckpt: Path, files: list[Path]) -> tuple[float, torch.Tensor]:
    """Every photo decoded as ``predict`` decodes it: ms per photo, and the images."""
    preprocess = Preprocessing.from_hparams(GemClassifier.load_from_checkpoint(ckpt, map_location="cpu").hparams)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    start = time.perf_counter()
    images = torch.stack([preprocess(path) for path in files])
    elapsed = time.perf_counter() - start
    torch.set_num_threads(threads)
    return 1000 * elapsed / len(files), images


def forward_per_photo(ckpt: Path, runtime: str, images: torch.Tensor, bf16: bool) -> float:
    """ms per photo of ``load_model(ckpt, runtime).predict_proba`` over ``images`` in batches of 32 (after one warm-up batch)."""
    model = load_model(ckpt, runtime=runtime)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)
    with autocast:
        model.predict_proba(images[:BATCH_SIZE])
        start = time.perf_counter()
        for first in range(0, len(images), BATCH_SIZE):
            model.predict_proba(images[first : first + BATCH_SIZE])
    return 1000 * (time.perf_counter() - start) / len(images)


if __name__ == "__main__":
    main()

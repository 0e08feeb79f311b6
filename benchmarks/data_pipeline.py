"""Images per second from the data pipeline: decode-every-epoch baseline vs the decoded-image cache.

Run from the repository root (prints figures; not a test):

    python benchmarks/data_pipeline.py [--data-dir ../shared/datasets/gemstones] [--num-workers 1]
                                       [--batches N | --quick] [--steps 20]

All loaders deliver 220 px batches of 32 with the same training augmentation (the seed's,
``Augmentation()``) and the same number of worker processes:

(a) baseline: ``ImageFolder(train)``, PIL decode + resize to 253 px of every image, every epoch,
    then the augmentation with torchvision's own ops (``torchvision_transform``);
(b) our first epoch: ``GemDataModule`` with a fresh cache dir: prepare_data + setup("fit") (decode
    train/ and test/ into the cache) plus one pass of ``train_dataloader``, end to end;
(c) our later epochs: the second and third passes of the same loader (cache warm; the
    augmentation is ``train_transform``: one OpenCV warp per image);
(d) the share of training-step time spent blocked in ``next(iterator)`` when ``GemClassifier``
    (bf16 autocast on CPU, channels_last) is fed by (c)'s loader.

(a) and (c) are timed after one warm-up batch; (b) includes everything, first batch too.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from torchvision.datasets import ImageFolder
from torchvision.transforms import v2

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from gem_lightning.data.augmentation import Augmentation  # noqa: E402
from gem_lightning.data.cache import Cache  # noqa: E402
from gem_lightning.data.datamodule import GemDataModule  # noqa: E402
from gem_lightning.data.loader import Loader  # noqa: E402
from gem_lightning.data.transforms import cache_size_for, torchvision_transform  # noqa: E402
from gem_lightning.training.module import GemClassifier  # noqa: E402

IMAGE_SIZE, BATCH_SIZE = 220, 32


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "datasets" / "gemstones")
    parser.add_argument("--num-workers", type=int, default=1)
    parser.add_argument("--batches", type=int, default=None, help="timed batches per pass (default: all)")
    parser.add_argument("--quick", action="store_true", help="20 batches per pass, 5 training steps")
    parser.add_argument("--steps", type=int, default=20, help="training steps timed for (d)")
    args = parser.parse_args(argv)
    if args.quick:
        args.batches, args.steps = 20, 5
    return args


def timed_pass(loader, batches: int | None, warmup: bool = True) -> tuple[int, float]:
    """(images, seconds) for one pass over ``loader``, after one untimed warm-up batch if asked."""
    iterator = iter(loader)
    if warmup:
        next(iterator)
    images, start = 0, time.perf_counter()
    for count, (batch, *_) in enumerate(iterator):
        images += len(batch)
        if batches is not None and count + 1 >= batches:
            break
    return images, time.perf_counter() - start


def baseline_loader(train_dir: Path, num_workers: int) -> DataLoader:
    """(a): what a plain torchvision pipeline does: decode and resize every file every epoch."""
    size = cache_size_for(IMAGE_SIZE)
    transform = v2.Compose([v2.PILToTensor(), v2.Resize((size, size)), torchvision_transform(IMAGE_SIZE, Augmentation())])
    dataset = ImageFolder(str(train_dir), transform=transform)
    return DataLoader(dataset, batch_size=BATCH_SIZE, shuffle=True, num_workers=num_workers)


def first_epoch(datamodule: GemDataModule, batches: int | None) -> tuple[DataLoader, int, float, float]:
    """(b): fill a fresh cache and run one pass; returns the loader, images, setup and total seconds."""
    start = time.perf_counter()
    datamodule.prepare_data()
    datamodule.setup("fit")
    setup_s = time.perf_counter() - start
    loader = datamodule.train_dataloader()
    images, pass_s = timed_pass(loader, None if batches is None else batches + 1, warmup=False)
    return loader, images, setup_s, setup_s + pass_s


def data_wait_share(model: GemClassifier, loader: DataLoader, steps: int) -> tuple[float, float, float]:
    """(d): seconds waiting for batches, total seconds, and their ratio, over ``steps`` training steps."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    iterator = iter(loader)

    def next_batch():
        nonlocal iterator
        try:
            return next(iterator)
        except StopIteration:
            iterator = iter(loader)
            return next(iterator)

    def step(images, targets) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(images)
        F.cross_entropy(logits.float(), targets).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    model.train()
    step(*next_batch()[:2])  # warm-up
    waited = 0.0
    start = time.perf_counter()
    for _ in range(steps):
        before = time.perf_counter()
        images, targets, _ = next_batch()
        waited += time.perf_counter() - before
        step(images, targets)
    total = time.perf_counter() - start
    return waited, total, waited / total


def report(rows: list[tuple[str, int, float]], setup_s: float, wait: tuple[float, float, float], steps: int) -> None:
    rate = {name: images / seconds for name, images, seconds in rows}
    print(f"\n{'pipeline':<44} {'images':>7} {'seconds':>8} {'images/s':>9}")
    for name, images, seconds in rows:
        print(f"{name:<44} {images:>7} {seconds:>8.2f} {images / seconds:>9.1f}")
    a, b, c = (rate[name] for name, *_ in rows)
    print(f"\n(b) setup (prepare_data + setup('fit'), decode into the cache): {setup_s:.2f} s")
    print(f"(c)/(a) later epochs vs baseline: {c / a:.2f}x")
    print(f"(b)/(a) first epoch vs baseline:  {b / a:.2f}x")
    waited, total, share = wait
    print(f"(d) {steps} training steps: {total:.2f} s, {waited:.3f} s blocked in next(iterator): {100 * share:.1f}% of step time")


def main(argv=None) -> None:
    args = parse_args(argv)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # the data module's dataset summary
    torch.manual_seed(0)
    print(
        f"data {args.data_dir}, {IMAGE_SIZE} px, batch {BATCH_SIZE}, num_workers {args.num_workers}, "
        f"torch threads {torch.get_num_threads()}, batches per pass {args.batches or 'all'}"
    )
    rows = []
    images, seconds = timed_pass(baseline_loader(args.data_dir / "train", args.num_workers), args.batches)
    rows.append(("(a) baseline: ImageFolder, decode every epoch", images, seconds))
    print(f"(a) done: {images / seconds:.1f} images/s", flush=True)

    with tempfile.TemporaryDirectory(prefix="gem-bench-cache-") as cache_dir:
        datamodule = GemDataModule(
            str(args.data_dir),
            cache=Cache(dir=cache_dir),
            image_size=IMAGE_SIZE,
            batch_size=BATCH_SIZE,
            loader=Loader(num_workers=args.num_workers),
        )
        loader, images, setup_s, total_s = first_epoch(datamodule, args.batches)
        rows.append(("(b) ours, first epoch (incl. setup)", images, total_s))
        print(f"(b) done: setup {setup_s:.2f} s, total {total_s:.2f} s", flush=True)
        passes = [timed_pass(loader, args.batches) for _ in range(2)]
        for number, (n, s) in enumerate(passes, start=2):
            print(f"(c) pass {number}: {n / s:.1f} images/s", flush=True)
        rows.append(("(c) ours, epochs 2-3 (cache warm)", sum(n for n, _ in passes), sum(s for _, s in passes)))
        model = GemClassifier(datamodule.class_names, IMAGE_SIZE)
        wait = data_wait_share(model, loader, args.steps)
    report(rows, setup_s, wait, args.steps)
    print(f"load average (1, 5, 15 min) at the end: {' '.join(Path('/proc/loadavg').read_text().split()[:3])}")


if __name__ == "__main__":
    main()

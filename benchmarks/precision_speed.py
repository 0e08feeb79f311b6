"""Training-step speed on the real photos: precision x memory format (x torch.compile).

Run from the repository root (prints figures; not a test):

    python benchmarks/precision_speed.py [--data-dir ../shared/datasets/gemstones] [--steps 6] [--rounds 2] [--compile]
        [--timm tf_efficientnet_lite0 --image-size 160]

Each variant trains ``GemClassifier`` (the seed network by default, 220 px, batch 32, Adam) on the same
batches of real photos from ``GemDataModule`` (warm decoded-image cache): fp32 or bf16 autocast,
contiguous or channels-last, optionally ``torch.compile`` (its compile time reported apart). Variants
alternate within each round so drift from other jobs hits all of them; the ratios to fp32 use the
median step time over rounds.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from gem_lightning.data.datamodule import GemDataModule
from gem_lightning.data.loader import Loader
from gem_lightning.models import TimmSpec, VGGSpec
from gem_lightning.training.module import GemClassifier

REPO = Path(__file__).resolve().parents[1]
VARIANTS = {"fp32": (False, False), "fp32+channels_last": (False, True), "bf16": (True, False), "bf16+channels_last": (True, True)}


def batches(data_dir: Path, count: int, image_size: int) -> tuple[list[str], list[tuple[torch.Tensor, torch.Tensor]]]:
    datamodule = GemDataModule(str(data_dir), image_size=image_size, batch_size=32, loader=Loader(num_workers=0))
    datamodule.prepare_data()
    datamodule.setup("fit")
    loader = iter(datamodule.train_dataloader())
    return datamodule.class_names, [next(loader)[:2] for _ in range(count)]


def step_seconds(model: GemClassifier, optimizer, data, bf16: bool) -> list[float]:
    """Seconds of each training step over ``data`` (the first is warm-up, dropped)."""
    times = []
    for images, targets in data:
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(model(images).float(), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    return times[1:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "datasets" / "gemstones")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--compile", action="store_true", help="also time bf16+channels_last under torch.compile")
    parser.add_argument("--timm", default=None, help="a timm model instead of the seed's VGG, e.g. tf_efficientnet_lite0 (depthwise convs)")
    parser.add_argument("--image-size", type=int, default=220)
    args = parser.parse_args()
    class_names, data = batches(args.data_dir, args.steps + 1, args.image_size)
    variants = dict(VARIANTS)
    if args.compile:
        variants["bf16+channels_last+compile"] = (True, True)
    medians: dict[str, list[float]] = {name: [] for name in variants}
    for round_ in range(args.rounds):
        for name, (bf16, channels_last) in variants.items():
            torch.manual_seed(0)
            network = TimmSpec(args.timm) if args.timm else VGGSpec()
            model = GemClassifier(class_names, args.image_size, network=network, channels_last=channels_last).train()
            if name.endswith("compile"):
                start = time.perf_counter()
                model.model = torch.compile(model.model)
                step_seconds(model, torch.optim.Adam(model.parameters()), data[:2], bf16)
                print(f"round {round_}: {name}: compile and first steps {time.perf_counter() - start:.1f} s")
            seconds = statistics.median(step_seconds(model, torch.optim.Adam(model.parameters()), data, bf16))
            medians[name].append(seconds)
            print(f"round {round_}: {name:<28} {32 / seconds:6.1f} images/s")
    base = statistics.median(medians["fp32"])
    print("\nvariant                      images/s  speed-up vs fp32")
    for name, values in medians.items():
        seconds = statistics.median(values)
        print(f"{name:<28} {32 / seconds:8.1f}  {base / seconds:6.2f}x")


if __name__ == "__main__":
    main()

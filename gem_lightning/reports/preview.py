"""Look at what the network will be fed before spending hours training on it.

:func:`augmentation_preview` draws, from a set-up :class:`~gem_lightning.data.datamodule.GemDataModule`,
one training photo next to several random augmentations of it (made by the data module's own
training transform, on the same cached image the loader uses: the augmentation policy and random
erasing included, named in the title) and a sample training batch titled with its class names.
Too strong a rotation, a zoom that crops the gem away, or labels that do not match the pictures
show up here at a glance.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from gem_lightning.data.datamodule import GemDataModule
from gem_lightning.data.datasets import CachedImageDataset
from gem_lightning.data.policies import describe_policy
from gem_lightning.reports.grids import image_grid_png


def augmentation_preview(datamodule: GemDataModule, out_dir: Path, n_augmented: int = 6, n_batch: int = 16, *, seed: int = 0) -> list[Path]:
    """Write ``augmentation_preview.png`` and ``train_batch.png`` into ``out_dir``.

    The photo and the batch are drawn at random with ``seed``, on a forked RNG, so the preview is
    reproducible and leaves the global random state (and thus a training run's) untouched.

    Args:
        datamodule: a data module that has run ``prepare_data()`` and ``setup("fit")``.
        out_dir: folder for the two PNGs (created).
        n_augmented: how many augmented versions of the one photo to draw.
        n_batch: size of the sample batch (at most the training set's size).
        seed: picks the photo, the batch and the augmentations.

    Returns:
        The paths of ``augmentation_preview.png`` and ``train_batch.png``.
    """
    dataset = datamodule.datasets["train"]
    names = list(datamodule.class_names)
    out_dir = Path(out_dir)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        position = int(torch.randint(len(dataset), ()))
        augmented = _augmentations(dataset, position, n_augmented)
        batch = [dataset[int(p)] for p in torch.randperm(len(dataset))[:n_batch]]
    label = names[dataset.labels[dataset.indices[position]]]
    policy = describe_policy(datamodule.augment)
    augmentation = image_grid_png(
        augmented,
        [f"original: {label}"] + [f"augmented {i}" for i in range(1, n_augmented + 1)],
        out_dir / "augmentation_preview.png",
        title=f"One training image and {n_augmented} random augmentations" + (f" ({policy})" if policy else ""),
    )
    batch_grid = image_grid_png(
        [_to_hwc(image) for image, _, _ in batch],
        [names[target] for _, target, _ in batch],
        out_dir / "train_batch.png",
        ncols=math.ceil(math.sqrt(len(batch))),
        title=f"A training batch of {len(batch)} (augmented, as the network sees it)",
    )
    return [augmentation, batch_grid]


def _augmentations(dataset: CachedImageDataset, position: int, count: int) -> list[np.ndarray]:
    """The cached image at ``position`` followed by ``count`` passes of the training transform."""
    cached = dataset.store[dataset.indices[position]].permute(2, 0, 1)  # (H, W, 3) -> (3, H, W)
    return [_to_hwc(cached)] + [_to_hwc(dataset.transform(cached)) for _ in range(count)]


def _to_hwc(image: torch.Tensor) -> np.ndarray:
    """A ``(3, H, W)`` uint8 tensor as an ``H x W x 3`` numpy array for drawing."""
    return image.permute(1, 2, 0).numpy()

"""A reproducible, stratified train/validation split that never separates identical files."""

from __future__ import annotations

import random
from collections import defaultdict

from gem_lightning.data.scan import ImageRecord


def stratified_split(records: list[ImageRecord], val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Split record indices into (train, validation), per class, by ``val_fraction``.

    Identical files (same digest) form one group that lands wholly on one side, so validation never
    scores an image the model trained on. Groups are ordered by digest before a seeded shuffle, so the
    split depends only on the files' contents and the seed: the same on every machine and rank.
    Each class with at least two groups keeps at least one in training and one in validation.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"data.val_fraction must be in [0, 1), got {val_fraction}.")
    groups: dict[str, list[int]] = defaultdict(list)
    for index, record in enumerate(records):
        groups[record.digest].append(index)
    by_class: dict[int, list[str]] = defaultdict(list)
    for digest, members in groups.items():
        by_class[min(records[i].label for i in members)].append(digest)

    rng = random.Random(seed)
    train, val = [], []
    for label in sorted(by_class):
        digests = sorted(by_class[label])
        rng.shuffle(digests)
        n_val = _validation_count(len(digests), val_fraction)
        for position, digest in enumerate(digests):
            (val if position < n_val else train).extend(groups[digest])
    return sorted(train), sorted(val)


def _validation_count(n_groups: int, val_fraction: float) -> int:
    if val_fraction == 0.0 or n_groups < 2:
        return 0
    return min(max(1, round(n_groups * val_fraction)), n_groups - 1)

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


def multilabel_split(records: list[ImageRecord], val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Split record indices into (train, validation) by iterative stratification (Sechidis et al., 2011).

    With several labels per image, a per-class split is undefined; a random one leaves rare labels
    out of validation (or out of training) by chance. Iterative stratification keeps every label's
    share in both sides: it repeatedly takes the label with the fewest images left to place and puts
    each of its images where that label is most wanted. As in :func:`stratified_split`, identical
    files move as one group, and the outcome depends only on the contents and the seed.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"data.val_fraction must be in [0, 1), got {val_fraction}.")
    if val_fraction == 0.0:
        return list(range(len(records))), []
    groups: dict[str, list[int]] = defaultdict(list)
    for index, record in enumerate(records):
        groups[record.digest].append(index)
    labels = {digest: {label for i in members for label in records[i].label_set} for digest, members in groups.items()}
    rng = random.Random(seed)
    remaining = sorted(groups)
    rng.shuffle(remaining)
    fractions = (1.0 - val_fraction, val_fraction)
    wanted_size = [len(remaining) * f for f in fractions]
    per_label = defaultdict(int)
    for digest in remaining:
        for label in labels[digest]:
            per_label[label] += 1
    wanted = [{label: count * f for label, count in per_label.items()} for f in fractions]
    sides: tuple[list[int], list[int]] = ([], [])
    left = dict(per_label)
    while remaining:
        rarest = min((label for label, count in left.items() if count > 0), key=lambda label: (left[label], label))
        for digest in [d for d in remaining if rarest in labels[d]]:
            side = max((0, 1), key=lambda s: (wanted[s][rarest], wanted_size[s], -s))
            sides[side].extend(groups[digest])
            wanted_size[side] -= 1
            for label in labels[digest]:
                wanted[side][label] -= 1
                left[label] -= 1
            remaining.remove(digest)
    return sorted(sides[0]), sorted(sides[1])

"""Near-duplicate photos: pairs that look alike, joined into clusters, flagged where they matter.

Two photos are near-duplicates when their perceptual hashes (DCT pHash, 64 bits) differ in at most
``max_hash_distance`` bits and their frozen-network features agree at least ``hash_min_similarity``
(cosine), or their features alone have a cosine similarity of at least ``min_similarity``. The hash
catches resized and re-encoded copies of a file, but centred objects on plain backgrounds share
hash bits, so a hash match must be confirmed by the features; the features alone also catch mirror
images and light crops, which move the hash. docs/audit.md measures the defaults on planted copies.
Pairs are joined transitively (union-find) into clusters. A cluster matters when it spans classes
(the same stone under two labels: at least one is wrong) or spans ``train/`` and ``test/`` (the
test photo was, in effect, trained on: test accuracy is inflated).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BLOCK = 1024
"""Rows compared at once: memory stays at ``BLOCK x N`` whatever the number of photos."""


@dataclass(frozen=True)
class DuplicateSettings:
    """When two photos count as near-duplicates (either test suffices).

    Args:
        max_hash_distance: the hash test: at most this many of the 64 pHash bits differ; -1 turns it off.
        hash_min_similarity: ... and the features' cosine similarity is at least this.
        min_similarity: the feature test: cosine similarity at least this; above 1 turns it off.
    """

    max_hash_distance: int = 6
    hash_min_similarity: float = 0.85
    min_similarity: float = 0.96


@dataclass(frozen=True)
class Cluster:
    """Near-duplicate photos (indices into the audited records), and why the cluster matters."""

    members: tuple[int, ...]
    across_classes: bool
    across_splits: bool


def near_duplicate_pairs(hashes: np.ndarray, features: np.ndarray, settings: DuplicateSettings) -> list[tuple[int, int]]:
    """Every pair ``(i, j)``, ``i < j``, that passes either test, compared a block of rows at a time."""
    count = len(hashes)
    pairs: list[tuple[int, int]] = []
    for start in range(0, count, BLOCK):
        rows = slice(start, min(count, start + BLOCK))
        similarity = features[rows] @ features.T
        close = similarity >= settings.min_similarity
        if settings.max_hash_distance >= 0:
            hash_close = np.bitwise_count(hashes[rows, None] ^ hashes[None, :]) <= settings.max_hash_distance
            close |= hash_close & (similarity >= settings.hash_min_similarity)
        i, j = np.nonzero(close)
        i = i + start
        keep = j > i
        pairs += list(zip(i[keep].tolist(), j[keep].tolist()))
    return pairs


def union_find_clusters(count: int, pairs: list[tuple[int, int]]) -> list[list[int]]:
    """Groups of two or more items joined by ``pairs`` (transitively), each sorted, in order of first member."""
    parent = list(range(count))

    def root(item: int) -> int:
        while parent[item] != item:
            parent[item] = parent[parent[item]]
            item = parent[item]
        return item

    for a, b in pairs:
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    groups: dict[int, list[int]] = {}
    for item in range(count):
        groups.setdefault(root(item), []).append(item)
    return sorted((g for g in groups.values() if len(g) > 1), key=lambda g: g[0])


def find_clusters(
    hashes: np.ndarray, features: np.ndarray, labels: list[int], splits: list[str], settings: DuplicateSettings
) -> list[Cluster]:
    """Near-duplicate clusters of the photos, flagged; those spanning classes or splits first."""
    clusters = [
        Cluster(tuple(group), len({labels[i] for i in group}) > 1, len({splits[i] for i in group}) > 1)
        for group in union_find_clusters(len(hashes), near_duplicate_pairs(hashes, features, settings))
    ]
    return sorted(clusters, key=lambda c: (not (c.across_classes or c.across_splits), c.members[0]))


def cluster_ids(count: int, clusters: list[Cluster]) -> np.ndarray:
    """A group id per item: its cluster's, or its own for a photo with no near-duplicate (for group k-fold)."""
    ids = np.arange(count)
    for cluster in clusters:
        ids[list(cluster.members)] = cluster.members[0]
    return ids

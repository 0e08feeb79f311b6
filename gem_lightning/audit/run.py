"""The whole audit of a folder-per-class set: scan, embed once, cluster near-duplicates, score labels
out of fold, write what a person acts on (``gem_lightning.audit.outputs``)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from gem_lightning.audit.duplicates import Cluster, DuplicateSettings, cluster_ids, find_clusters
from gem_lightning.audit.features import embed
from gem_lightning.audit.label_issues import Suspect, check_folds, head_inputs, out_of_fold_probabilities, rank_label_issues
from gem_lightning.data.cache import DecodeSettings
from gem_lightning.data.folders import FolderData
from gem_lightning.data.scan import ImageRecord, Rejected, SplitScan


@dataclass(frozen=True)
class AuditOptions:
    """How the audit runs.

    Args:
        folds: k of the out-of-fold probabilities (each photo scored by a head fitted on the other k-1 folds).
        image_size: side the photos are decoded to for the feature network (its own 224 px by default).
        seed: seed of the fold assignment.
        batch_size: photos per forward pass of the feature network.
        duplicates: when two photos count as near-duplicates.
        max_gallery: at most this many suspects (and clusters of each kind) are drawn; the CSVs list all.
    """

    folds: int = 5
    image_size: int = 224
    seed: int = 0
    batch_size: int = 32
    duplicates: DuplicateSettings = DuplicateSettings()
    max_gallery: int = 50


@dataclass
class AuditResult:
    """What the audit found. ``records`` holds the usable training photos first, then the test photos;
    ``splits`` says which is which; suspect indices point into the training part."""

    data_dir: Path
    class_names: list[str]
    records: list[ImageRecord]
    splits: list[str]
    probabilities: np.ndarray
    suspects: list[Suspect]
    clusters: list[Cluster]
    rejected: list[Rejected]
    scans: dict[str, SplitScan]
    options: AuditOptions
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def train_count(self) -> int:
        return self.splits.count("train")

    def leaked_test(self) -> list[int]:
        """Indices of the test photos that have a near-duplicate in ``train/``."""
        leaked = set()
        for cluster in self.clusters:
            if cluster.across_splits:
                leaked |= {i for i in cluster.members if self.splits[i] == "test"}
        return sorted(leaked)


def scan_splits(folders: FolderData) -> dict[str, SplitScan]:
    """The scans of ``train/`` and, where it exists, ``test/`` (``data.corrections`` applied)."""
    splits = ["train"] + (["test"] if (folders.data_dir / "test").is_dir() else [])
    return {split: folders.scan(split) for split in splits}


def run_audit(folders: FolderData, options: AuditOptions = AuditOptions()) -> AuditResult:
    """Audit the folder ``folders`` reads (its decode settings: auto-crop, background; its decode
    cache; its corrections).

    Raises:
        UserInputError: fewer than two classes (the folder check), or ``options.folds`` below 2 or
            above the smallest class of ``train/``.
    """
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    scans = scan_splits(folders)
    labels_before = np.array([r.label for r in scans["train"].records])
    check_folds(labels_before, folders.class_names, options.folds)  # before minutes of decoding
    split_of = {record.path: split for split, scan in scans.items() for record in scan.records}
    settings = DecodeSettings(options.image_size, folders.settings.autocrop, folders.settings.background)
    embedded = embed(
        [r for scan in scans.values() for r in scan.records],
        settings,
        cache_dir=folders.cache_dir,
        num_workers=folders.num_workers,
        multiprocessing_context=folders.multiprocessing_context,
        batch_size=options.batch_size,
    )
    seconds["scan, decode and embed"] = time.perf_counter() - start
    splits = [split_of[r.path] for r in embedded.records]
    labels = [r.label for r in embedded.records]

    start = time.perf_counter()
    clusters = find_clusters(embedded.hashes, embedded.features, labels, splits, options.duplicates)
    seconds["near-duplicates"] = time.perf_counter() - start

    start = time.perf_counter()
    train = np.array([s == "train" for s in splits])
    train_labels = np.array(labels)[train]
    check_folds(train_labels, folders.class_names, options.folds)
    groups = cluster_ids(len(labels), clusters)[train]
    inputs = head_inputs(embedded.features[train], embedded.colours[train])
    probabilities = out_of_fold_probabilities(
        inputs, train_labels, groups, len(folders.class_names), folds=options.folds, seed=options.seed
    )
    suspects = rank_label_issues(train_labels, probabilities)
    seconds["label issues"] = time.perf_counter() - start
    return AuditResult(
        folders.data_dir,
        list(folders.class_names),
        embedded.records,
        splits,
        probabilities,
        suspects,
        clusters,
        embedded.rejected,
        scans,
        options,
        seconds,
    )

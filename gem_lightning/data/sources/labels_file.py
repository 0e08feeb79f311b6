"""A labels file (``data.data_dir: <labels.csv>``): photos with several labels each, for multi-label training.

Targets are multi-hot float vectors over the class names; the train/validation split is iterative
stratification (``gem_lightning.data.split.multilabel_split``) unless the file names ``val`` rows.
"""

from __future__ import annotations

from pathlib import Path

import torch
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import Dataset

from gem_lightning.data.cache import Cache, DecodeSettings, ImageStore
from gem_lightning.data.datasets import CachedImageDataset
from gem_lightning.data.folders import FolderData
from gem_lightning.data.labels_file import LabelRow, class_names_of, multi_hot, read_labels_file, scan_rows
from gem_lightning.data.provenance import PhotoRecord
from gem_lightning.data.scan import ImageRecord, Rejected, SplitScan
from gem_lightning.data.sources.base import DataSource, Stage, Transforms
from gem_lightning.data.split import multilabel_split


class LabelsFileData(FolderData):
    """:class:`FolderData` (decoding, caching, the scan summary) over the photos a labels file lists."""

    def __init__(self, csv_path: Path, rows: list[LabelRow], class_names: list[str], decode: DecodeSettings, **options) -> None:
        super().__init__(csv_path, class_names, decode, **options)
        self.rows = rows

    def splits(self) -> list[str]:
        return [split for split in ("train", "val", "test") if any(row.split == split for row in self.rows)]

    def where(self, split: str) -> str:
        return f"{self.data_dir} ({split} rows)"

    def _scan(self, split: str) -> SplitScan:
        return scan_rows(self.rows, split, self.class_names, self.data_dir)


class LabelsFileSource(DataSource):
    """The photos and label sets of a labels file.

    Args:
        csv_path: the labels file.
        decode: how images are decoded.
        val_fraction: share of the training rows held out for validation (when no row says ``val``).
        seed: seed of that split.
        cache: where decoded images are kept.
        bad_files: ``skip`` or ``strict``.
        num_workers: decoding processes.
        multiprocessing_context: how they start.
    """

    task = "multilabel"

    def __init__(
        self,
        csv_path: Path,
        decode: DecodeSettings,
        *,
        val_fraction: float,
        seed: int,
        cache: Cache,
        bad_files: str,
        num_workers: int,
        multiprocessing_context: str,
    ) -> None:
        rows = read_labels_file(csv_path)
        self.decode = decode
        self.class_names = class_names_of(rows, csv_path)
        self.val_fraction, self.seed = val_fraction, seed
        self.data = LabelsFileData(
            csv_path,
            rows,
            self.class_names,
            decode,
            cache=cache,
            bad_files=bad_files,
            num_workers=num_workers,
            multiprocessing_context=multiprocessing_context,
        )
        self.records: dict[str, list[ImageRecord]] = {}

    def prepare(self) -> None:
        self.data.fill_disk_cache()

    def datasets(self, stage: Stage, transforms: Transforms) -> dict[str, Dataset]:
        if stage == "test":
            store = self.data.load_split("test")
            self.records["test"] = store.records
            return {"test": self._dataset(store, list(range(len(store.records))), transforms.eval)}
        if "val" in self.data.splits():
            train, val = self.data.load_split("train"), self.data.load_split("val")
            self.records.update(train=train.records, val=val.records)
            return {
                "train": self._dataset(train, list(range(len(train.records))), transforms.train),
                "val": self._dataset(val, list(range(len(val.records))), transforms.eval),
            }
        store = self.data.load_split("train")
        self.data.check_class_sizes(store.records, self.val_fraction)
        train_idx, val_idx = multilabel_split(store.records, self.val_fraction, self.seed)
        self.records["train"] = [store.records[i] for i in train_idx]
        self.records["val"] = [store.records[i] for i in val_idx]
        rank_zero_info(
            f"Split {len(store.records)} training images into {len(train_idx)} train and {len(val_idx)} validation "
            f"(iterative stratification, seed {self.seed})."
        )
        return {"train": self._dataset(store, train_idx, transforms.train), "val": self._dataset(store, val_idx, transforms.eval)}

    def _dataset(self, store: ImageStore, indices: list[int], transform) -> CachedImageDataset:
        # One (N, C) tensor, not N of them: each tensor crosses to a loader worker as its own file descriptor.
        targets = torch.stack([multi_hot(record.label_set, len(self.class_names)) for record in store.records])
        return CachedImageDataset(store, targets, indices, transform)

    def photos(self, split: str) -> PhotoRecord | None:
        return PhotoRecord.of_files(record.digest for record in self.records[split]) if split in self.records else None

    def class_counts(self) -> list[int]:
        counts = [0] * len(self.class_names)
        for record in self.records["train"]:
            for label in record.label_set:
                counts[label] += 1
        return counts

    def paths(self, split: str) -> list[Path] | None:
        return [record.path for record in self.records[split]]

    @property
    def rejected(self) -> dict[str, list[Rejected]]:
        return self.data.rejected

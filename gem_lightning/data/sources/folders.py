"""A folder per class (``train/<Class>/*``, ``test/<Class>/*``): scanned, decoded into the cache, split reproducibly.

With ``data.generate: synthetic`` the embedded procedural gem dataset is written into the folder on first use.
"""

from __future__ import annotations

from pathlib import Path

from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import Dataset

from gem_lightning.data.cache import Cache, DecodeSettings
from gem_lightning.data.datasets import CachedImageDataset
from gem_lightning.data.folders import FolderData
from gem_lightning.data.provenance import PhotoRecord
from gem_lightning.data.scan import EXPECTED_LAYOUT, DatasetLayoutError, ImageRecord, Rejected, check_dataset_dir
from gem_lightning.data.sources.base import DataSource, Stage, Transforms
from gem_lightning.data.split import stratified_split
from gem_lightning.data.tools.synthetic import SYNTHETIC_CLASSES, generate_gem_dataset, is_generated_dataset


class FolderSource(DataSource):
    """The photos of ``data_dir``'s class folders.

    Args:
        data_dir: the dataset folder.
        decode: how images are decoded.
        val_fraction: share of each class of ``train/`` held out for validation.
        seed: seed of that split.
        generate: write the embedded synthetic dataset into ``data_dir`` (see ``GemDataModule``).
        cache: where decoded images are kept.
        bad_files: ``skip`` or ``strict``.
        num_workers: decoding processes.
        multiprocessing_context: how they start.
        corrections: a CSV of photos to drop or relabel, or None.
    """

    def __init__(
        self,
        data_dir: Path,
        decode: DecodeSettings,
        *,
        val_fraction: float,
        seed: int,
        generate: bool,
        cache: Cache,
        bad_files: str,
        num_workers: int,
        multiprocessing_context: str,
        corrections: str | None,
    ) -> None:
        self.data_dir = data_dir
        self.decode = decode
        self.val_fraction = val_fraction
        self.seed = seed
        self.generates = generate and _may_generate_into(data_dir)
        self.class_names = sorted(gem.name for gem in SYNTHETIC_CLASSES) if self.generates else check_dataset_dir(data_dir)
        self.folders = FolderData(
            data_dir,
            self.class_names,
            decode,
            cache=cache,
            bad_files=bad_files,
            num_workers=num_workers,
            multiprocessing_context=multiprocessing_context,
            corrections=corrections,
        )
        self.records: dict[str, list[ImageRecord]] = {}
        self._counts: list[int] | None = None

    def prepare(self) -> None:
        if self.generates:
            generate_gem_dataset(self.data_dir)
        self.folders.fill_disk_cache()

    def datasets(self, stage: Stage, transforms: Transforms) -> dict[str, Dataset]:
        if stage == "test":
            store = self.folders.load_split("test")
            self.records["test"] = store.records
            labels = [r.label for r in store.records]
            return {"test": CachedImageDataset(store, labels, list(range(len(labels))), transforms.eval)}
        store = self.folders.load_split("train")
        self.folders.check_class_sizes(store.records, self.val_fraction)
        labels = [r.label for r in store.records]
        train_idx, val_idx = stratified_split(store.records, self.val_fraction, self.seed)
        self.records["train"] = [store.records[i] for i in train_idx]
        self.records["val"] = [store.records[i] for i in val_idx]
        rank_zero_info(
            f"Split {len(store.records)} training images into {len(train_idx)} train and {len(val_idx)} validation (seed {self.seed})."
        )
        return {
            "train": CachedImageDataset(store, labels, train_idx, transforms.train),
            "val": CachedImageDataset(store, labels, val_idx, transforms.eval),
        }

    def class_counts(self) -> list[int]:
        counts = [0] * len(self.class_names)
        for record in self.records["train"]:
            counts[record.label] += 1
        return counts

    def paths(self, split: str) -> list[Path] | None:
        return [record.path for record in self.records[split]]

    def photos(self, split: str) -> PhotoRecord | None:
        return PhotoRecord.of_files(record.digest for record in self.records[split]) if split in self.records else None

    @property
    def rejected(self) -> dict[str, list[Rejected]]:
        return self.folders.rejected


def _may_generate_into(root: Path) -> bool:
    """Whether ``data.generate: synthetic`` writes the embedded dataset into ``root``.

    Only into an absent or empty folder, or over an earlier generated dataset: a folder that already
    holds ``train/`` is the user's own dataset and is trained on as it is (the natural first try of
    ``--data.data_dir <my photos>`` with the quickstart config); any other non-empty folder is
    refused, and nothing in it is touched.
    """
    if is_generated_dataset(root):
        return True
    if (root / "train").is_dir():
        rank_zero_info(f"{str(root)!r} already holds a dataset (train/): training on it; nothing is generated.")
        return False
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise DatasetLayoutError(
            f"data.data_dir {str(root)!r} is not empty and holds no 'train/' folder, and data.generate "
            "synthetic writes the embedded dataset only into an absent or empty folder. Give a dataset folder "
            f"(train/<Class>/ images), or a new or empty folder for the embedded one. {EXPECTED_LAYOUT}"
        )
    return True

"""An image folder read for training: scanned once per process, decoded once into the cache, reported.

Right for folders of thousands to tens of thousands of photos; larger sets are optimized once into
a stream (``gem_lightning.data.streaming``) instead of being scanned and decoded on every machine.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from pathlib import Path

from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from gem_lightning.data.cache import Cache, DecodeSettings, DiskCache, ImageStore, build_store, estimated_bytes
from gem_lightning.data.corrections import Corrections, apply_corrections, read_corrections
from gem_lightning.data.scan import DatasetLayoutError, ImageRecord, Rejected, SplitScan, format_summary, scan_split
from gem_lightning.errors import UserInputError


class BadFilesError(UserInputError):
    """``bad_files: strict`` and the dataset has files that cannot be used."""


class FolderData:
    """The decoded images of ``data_dir``'s splits, and what was left out of each, with why.

    Args:
        data_dir: the dataset folder (``train/<Class>/``, ``test/<Class>/``).
        class_names: class names in label order.
        settings: how images are decoded.
        cache: where decoded images are kept (``data.cache``).
        bad_files: ``skip`` or ``strict``.
        num_workers: decoding processes.
        multiprocessing_context: how they start.
        corrections: a CSV of photos to drop or relabel (``gem_lightning.data.corrections``), or None.
    """

    def __init__(
        self,
        data_dir: Path,
        class_names: list[str],
        settings: DecodeSettings,
        *,
        cache: Cache,
        bad_files: str,
        num_workers: int,
        multiprocessing_context: str,
        corrections: str | Path | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.class_names = class_names
        self.settings = settings
        self.cache = cache
        self.cache_dir = cache.directory
        self.bad_files = bad_files
        self.num_workers = num_workers
        self.multiprocessing_context = multiprocessing_context
        self.corrections_path = corrections
        self._corrections: Corrections | None = None
        self.scans: dict[str, SplitScan] = {}
        self.rejected: dict[str, list[Rejected]] = {}

    def fill_disk_cache(self) -> None:
        """Decode every image of ``train/`` and ``test/`` into the disk cache (once per machine)."""
        if self.cache_dir is None:
            return
        for split in self.splits():
            self._disk_cache().fill(self.scan(split).records, self.num_workers, self.multiprocessing_context)

    def splits(self) -> list[str]:
        """The splits the dataset has."""
        return [split for split in ("train", "test") if (self.data_dir / split).is_dir()]

    def load_split(self, split: str) -> ImageStore:
        """The split's decoded images; reports (or, with ``bad_files: strict``, refuses) what it leaves out."""
        fresh = self.scan(split)  # copied: decode failures are added to this setup's report only
        scan = replace(fresh, rejected=list(fresh.rejected))
        store, decode_failures = build_store(
            scan.records,
            self.settings,
            disk=self._disk_cache(),
            in_memory=self._fits_in_memory(len(scan.records)),
            num_workers=self.num_workers,
            multiprocessing_context=self.multiprocessing_context,
        )
        scan.rejected += decode_failures
        scan.records = store.records
        self._report(split, scan)
        self.rejected[split] = scan.rejected
        if not store.records:
            raise DatasetLayoutError(f"{str(scan.root)!r} has no usable images. See the summary above.")
        return store

    def check_class_sizes(self, records: list[ImageRecord], val_fraction: float) -> None:
        """Every class needs training images, and two to be split into train and validation."""
        counts = Counter(label for record in records for label in record.label_set)
        train_dir = self.where("train")
        empty = [name for label, name in enumerate(self.class_names) if counts[label] == 0]
        if empty:
            raise DatasetLayoutError(
                f"class folder(s) with no usable images in {train_dir!r}: {', '.join(empty)}. A class needs "
                "training images: add photos, or remove the folder (the summary above lists files not used)."
            )
        thin = [f"{name} ({counts[label]})" for label, name in enumerate(self.class_names) if counts[label] < 2]
        if thin and val_fraction > 0:
            raise DatasetLayoutError(
                f"class(es) in {train_dir!r} too small to split into train and validation: {', '.join(thin)} "
                "usable image(s); each needs at least 2. Add photos, remove the folder, or set --data.val_fraction 0."
            )

    def scan(self, split: str) -> SplitScan:
        """Probe and hash the split's files once per process (``prepare_data`` and ``setup`` share it),
        with ``data.corrections`` applied."""
        if split not in self.scans:
            self.scans[split] = self._scan(split)
        return self.scans[split]

    def where(self, split: str) -> str:
        """Where ``split``'s photos are listed, for messages."""
        return str(self.data_dir / split)

    def _scan(self, split: str) -> SplitScan:
        split_dir = self.data_dir / split
        if not split_dir.is_dir():
            raise DatasetLayoutError(f"{str(split_dir)!r} does not exist: `{split}` needs a {split}/<Class>/ folder in data_dir.")
        scan = scan_split(split_dir, self.class_names)
        corrections = self.corrections()
        return apply_corrections(scan, corrections, self.data_dir) if corrections else scan

    def corrections(self) -> Corrections | None:
        """The corrections file, read and checked once (every problem in it is one error line)."""
        if self.corrections_path is not None and self._corrections is None:
            self._corrections = read_corrections(self.corrections_path, self.data_dir, self.class_names)
        return self._corrections

    def _report(self, split: str, scan: SplitScan) -> None:
        summary = format_summary({split: scan})
        if scan.rejected and self.bad_files == "strict":
            raise BadFilesError(
                f"{len(scan.rejected)} unusable file(s) in {str(scan.root)!r} and data.bad_files is 'strict'.\n"
                f"{summary}\nRemove or fix them, or set --data.bad_files skip to train without them."
            )
        rank_zero_info(f"Dataset {str(scan.root)!r}:\n{summary}")
        if scan.rejected:
            rank_zero_warn(f"{len(scan.rejected)} file(s) in {str(scan.root)!r} are skipped; the summary above says why.")

    def _disk_cache(self) -> DiskCache | None:
        return DiskCache(self.cache_dir, self.settings) if self.cache_dir is not None else None

    def _fits_in_memory(self, count: int) -> bool:
        if self.cache.mode == "disk" and self.cache_dir is not None:
            return False
        needed = estimated_bytes(count, self.settings)
        fits = needed <= self.cache.memory_gb * 2**30
        if not fits and self.cache_dir is not None:
            rank_zero_warn(
                f"The decoded images need {needed / 2**30:.1f} GiB, above data.cache.memory_gb="
                f"{self.cache.memory_gb}; reading them from the disk cache in {str(self.cache_dir)!r} instead."
            )
            return False
        return True

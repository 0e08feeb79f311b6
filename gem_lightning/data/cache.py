"""Decode every image once: a store of resized uint8 images that later epochs read instead of files.

Entries are keyed by the digest of the file's bytes and the decode settings (size, auto-crop,
background), so a changed file or a changed size gets a new key and is decoded again: a stale
image can never be served. On disk, each entry is one ``.npy`` file written atomically, shared by
every run and every DDP rank on the machine; files that fail to decode leave a ``.bad`` note with
the reason, so all ranks agree on which images exist without decoding them again.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from gem_lightning.data.images import BadImageError, ImageSource, decode_resized
from gem_lightning.data.loader import SignalSafeDataLoader
from gem_lightning.data.scan import ImageRecord, Rejected
from gem_lightning.files import atomic_write


def default_cache_dir() -> str:
    """``$GEM_LIGHTNING_CACHE``, else ``$XDG_CACHE_HOME/gem-lightning``, else ``~/.cache/gem-lightning``."""
    if "GEM_LIGHTNING_CACHE" in os.environ:
        return os.environ["GEM_LIGHTNING_CACHE"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "gem-lightning")


@dataclass(frozen=True)
class Cache:
    """Where decoded images are kept (``data.cache``).

    Args:
        mode: ``memory``: decoded images in RAM (falls back to ``disk`` above ``memory_gb``);
            ``disk``: read decoded images from ``dir`` each time.
        dir: where decoded images (and the chunks a remote stream downloads) persist, shared by runs
            and DDP ranks; ``auto``: ``$GEM_LIGHTNING_CACHE``, else ``~/.cache/gem-lightning``;
            ``null`` keeps them in memory only, decoded again by each process.
        memory_gb: memory budget of the in-memory cache, per process.
    """

    mode: Literal["memory", "disk"] = "memory"
    dir: str | None = "auto"
    memory_gb: float = 4.0

    def problems(self) -> list[str]:
        """What cannot work, each naming its setting."""
        return [f"data.cache.memory_gb must be 0 or more, got {self.memory_gb}"] if self.memory_gb < 0 else []

    @property
    def directory(self) -> Path | None:
        """``dir``, resolved (``auto``: :func:`default_cache_dir`)."""
        if self.dir is None:
            return None
        return Path(default_cache_dir() if self.dir == "auto" else self.dir).expanduser()


_DISK_FULL_ADVICE = "Free some space, or set data.cache.dir to a folder on another disk (null: decode into memory only), and run again."


@dataclass(frozen=True)
class DecodeSettings:
    """Everything that changes the decoded pixels; part of every cache key."""

    size: int
    autocrop: bool = False
    background: tuple[int, int, int] = (255, 255, 255)

    @property
    def tag(self) -> str:
        crop = "-autocrop" if self.autocrop else ""
        background = "".join(f"{c:02x}" for c in self.background)
        return f"v2-{self.size}px{crop}-bg{background}"  # v2: JPEG draft margin 2 (images.DRAFT_MARGIN)

    def decode(self, source: ImageSource) -> np.ndarray:
        """The image (a path, or the file's bytes) as the cache stores it; raises BadImageError."""
        image = decode_resized(source, self.size, background=self.background, autocrop=self.autocrop)
        return np.require(image, requirements=["C", "W"])


class _DecodeJobs(Dataset):
    """Decodes records in DataLoader workers; failures come back as reasons, never as exceptions."""

    def __init__(self, records: list[ImageRecord], settings: DecodeSettings) -> None:
        self.records = records
        self.settings = settings

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[int, np.ndarray | None, str | None]:
        try:
            return index, self.settings.decode(self.records[index].path), None
        except BadImageError as error:
            return index, None, error.reason


def _as_is(item):
    return item


def decode_all(records: list[ImageRecord], settings: DecodeSettings, num_workers: int, multiprocessing_context: str | None = None):
    """Yield ``(index, image or None, reason or None)`` for every record, decoding in parallel
    (``num_workers`` processes started as ``multiprocessing_context`` says; see ``SignalSafeDataLoader``)."""
    loader = SignalSafeDataLoader(
        _DecodeJobs(records, settings),
        batch_size=None,
        num_workers=num_workers,
        multiprocessing_context=multiprocessing_context,
        collate_fn=_as_is,
    )
    yield from loader


class DiskCache:
    """Decoded images as one ``.npy`` per entry under ``directory/<settings tag>/``."""

    def __init__(self, directory: Path, settings: DecodeSettings) -> None:
        self.root = Path(directory) / settings.tag
        self.settings = settings

    def _path(self, digest: str, suffix: str) -> Path:
        return self.root / digest[:2] / f"{digest}{suffix}"

    def has(self, record: ImageRecord) -> bool:
        return self._path(record.digest, ".npy").exists() or self._path(record.digest, ".bad").exists()

    def reason(self, record: ImageRecord) -> str | None:
        bad = self._path(record.digest, ".bad")
        return bad.read_text() if bad.exists() else None

    def load(self, record: ImageRecord) -> np.ndarray:
        return np.load(self._path(record.digest, ".npy"))

    def store(self, record: ImageRecord, image: np.ndarray | None, reason: str | None) -> None:
        """Write the decoded image, or the reason it has none, all or nothing.

        Not fsynced: an entry lost to a power cut is decoded again. A full disk raises
        :class:`~gem_lightning.errors.DiskFullError` and leaves no partial entry.
        """
        if image is not None:
            with self._write(record.digest, ".npy") as file:
                np.save(file, image)
        else:
            with self._write(record.digest, ".bad") as file:
                file.write(str(reason).encode())

    def _write(self, digest: str, suffix: str):
        return atomic_write(self._path(digest, suffix), durable=False, what="the cache entry", advice=_DISK_FULL_ADVICE)

    def fill(self, records: list[ImageRecord], num_workers: int, multiprocessing_context: str | None = None) -> int:
        """Decode the records not yet cached; returns how many were decoded."""
        missing = [r for r in records if not self.has(r)]
        for index, image, reason in decode_all(missing, self.settings, num_workers, multiprocessing_context):
            self.store(missing[index], image, reason)
        return len(missing)


class ImageStore:
    """Random access to decoded images (``(H, W, 3)`` uint8 tensors) by record index.

    In memory, all images sit in one shared-memory tensor that DataLoader workers read without
    copying; otherwise each access reads the entry from the disk cache.
    """

    def __init__(self, images: torch.Tensor | None, disk: DiskCache | None, records: list[ImageRecord]) -> None:
        self.images = images
        self.disk = disk
        self.records = records

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> torch.Tensor:
        if self.images is not None:
            return self.images[index]
        return torch.from_numpy(self.disk.load(self.records[index]))


def estimated_bytes(count: int, settings: DecodeSettings) -> int:
    return count * settings.size * settings.size * 3


def build_store(
    records: list[ImageRecord],
    settings: DecodeSettings,
    *,
    disk: DiskCache | None,
    in_memory: bool,
    num_workers: int,
    multiprocessing_context: str | None = None,
) -> tuple[ImageStore, list[Rejected]]:
    """Decode (or read back) every record; returns the store of good images and the rejects.

    The store's indices follow the good records in their given order.
    """
    if disk is not None:
        disk.fill(records, num_workers, multiprocessing_context)
        reasons = [disk.reason(r) for r in records]
        rejected = [Rejected(r.path, reason) for r, reason in zip(records, reasons) if reason is not None]
        good = [r for r, reason in zip(records, reasons) if reason is None]
        if not in_memory:
            return ImageStore(None, disk, good), rejected
        images = _shared_images(len(good), settings)
        view = images.numpy()
        for index, record in enumerate(good):
            view[index] = disk.load(record)
        return ImageStore(images, None, good), rejected

    decoded: list[np.ndarray | None] = [None] * len(records)
    reasons: list[str | None] = [None] * len(records)
    for index, image, reason in decode_all(records, settings, num_workers, multiprocessing_context):
        decoded[index], reasons[index] = image, reason
    good = [r for r, image in zip(records, decoded) if image is not None]
    rejected = [Rejected(r.path, reason) for r, reason in zip(records, reasons) if reason is not None]
    images = _shared_images(len(good), settings)
    view = images.numpy()
    for index, image in enumerate(image for image in decoded if image is not None):
        view[index] = image
    return ImageStore(images, None, good), rejected


def _shared_images(count: int, settings: DecodeSettings) -> torch.Tensor:
    """An empty ``(count, S, S, 3)`` uint8 tensor in shared memory, which workers read without copies."""
    return torch.empty((count, settings.size, settings.size, 3), dtype=torch.uint8).share_memory_()

"""Optimize a folder-per-class set (or a labels file) once into a stream (LitData chunks at a local path or ``s3://``).

The folder is scanned as ``fit`` scans it (bad files with reasons, exact duplicates, label
conflicts: the same summary), ``train/`` is split into ``train`` and ``val`` as ``fit`` would split
it, and each split is written by ``litdata.optimize`` in parallel workers. ``gem_dataset.json`` is
written last, so a stream is complete or is not one. An existing stream is never mixed into.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from litdata import optimize

from gem_lightning.data import object_store
from gem_lightning.data.cache import DecodeSettings
from gem_lightning.data.images import BadImageError
from gem_lightning.data.labels_file import class_names_of, is_labels_file, multi_hot, read_labels_file, scan_rows
from gem_lightning.data.scan import ImageRecord, check_dataset_dir, format_summary, relative_path, scan_split
from gem_lightning.data.split import multilabel_split, stratified_split
from gem_lightning.data.streaming import METADATA, ImageFormat, StreamInfo, is_remote, open_split, read_info, split_location, write_info
from gem_lightning.data.transforms import cache_size_for
from gem_lightning.errors import UserInputError

log = logging.getLogger(__name__)

CHUNK_BYTES = "64MB"
"""LitData's default: large enough that object-store requests are few, small enough to shard."""


@dataclass(frozen=True)
class _Encoder:
    """Turns one image record into a stored item (a picklable callable for LitData's workers)."""

    root: Path
    image_format: ImageFormat
    decode: DecodeSettings
    num_labels: int | None = None
    """Set for a multi-label set: each item then carries its multi-hot ``targets``."""

    def __call__(self, job: tuple[int, ImageRecord]) -> Iterator[dict]:
        index, record = job
        try:
            image = record.path.read_bytes() if self.image_format == "encoded" else self.decode.decode(record.path)
            if self.image_format == "encoded":
                self.decode.decode(image)  # a file that would fail every epoch is left out now
        except BadImageError as error:
            log.warning("left out %s: %s", record.path, error.reason)
            return
        item = {
            "image": image if self.image_format == "encoded" else np.ascontiguousarray(image),
            "label": record.label,
            "index": index,
            "path": relative_path(record.path, self.root),
        }
        if self.num_labels is not None:
            item["targets"] = multi_hot(record.label_set, self.num_labels).numpy().astype(np.uint8)
        yield item


def optimize_dataset(
    data_dir: Path,
    output: str,
    *,
    image_size: int = 220,
    image_format: ImageFormat = "resized",
    autocrop: bool = False,
    background: tuple[int, int, int] = (255, 255, 255),
    val_fraction: float = 0.2,
    seed: int = 42,
    num_workers: int = 2,
    chunk_bytes: str = CHUNK_BYTES,
) -> StreamInfo:
    """Write ``data_dir``'s ``train/`` (split into train and val) and ``test/`` as a stream at ``output``.

    Raises:
        UserInputError: the folder is not a dataset, or ``output`` already holds data.
    """
    _refuse_existing(output)
    multilabel = is_labels_file(data_dir)
    if multilabel:
        class_names, splits = _split_labels_file(data_dir, val_fraction, seed)
    else:
        class_names = check_dataset_dir(data_dir)
        splits = _split_records(data_dir, class_names, val_fraction, seed)
    decode = DecodeSettings(cache_size_for(image_size), autocrop, tuple(background))
    root = data_dir.parent if multilabel else data_dir
    encoder = _Encoder(root, image_format, decode, len(class_names) if multilabel else None)
    counts = {}
    for split, records in splits.items():
        location = split_location(output, split)
        with object_store.explain_s3_errors(location), _staging_folder():
            optimize(
                fn=encoder,
                inputs=list(enumerate(records)),
                output_dir=location,
                chunk_bytes=chunk_bytes,
                num_workers=num_workers,
                reorder_files=False,
                verbose=False,
                storage_options=object_store.storage_options(location),
            )
        counts[split] = _written_count(output, split, len(records))
    task = "multilabel" if multilabel else "multiclass"
    info = StreamInfo(class_names, image_format, decode, val_fraction, seed, counts, source=str(data_dir.resolve()), task=task)
    write_info(output, info)
    return info


@contextmanager
def _staging_folder() -> Iterator[None]:
    """A staging folder of this run's own for chunks bound for an object store (LitData's default,
    one fixed ``/tmp/chunks``, is shared by every run on the machine)."""
    if "DATA_OPTIMIZER_CACHE_FOLDER" in os.environ:
        yield
        return
    with tempfile.TemporaryDirectory(prefix="gem-optimize-") as folder:
        os.environ["DATA_OPTIMIZER_CACHE_FOLDER"] = folder
        try:
            yield
        finally:
            del os.environ["DATA_OPTIMIZER_CACHE_FOLDER"]


def _written_count(output: str, split: str, expected: int) -> int:
    """How many items the split holds; LitData reports a failed upload only in its log, leaving a
    split with no chunks, which is refused here in one line."""
    try:
        return len(open_split(output, split))
    except (AssertionError, RuntimeError) as error:
        raise UserInputError(
            f"writing {split_location(output, split)!r} failed: none of its {expected} images arrived (see the log above "
            f"for LitData's reason: {error})."
        ) from None


def _split_records(data_dir: Path, class_names: list[str], val_fraction: float, seed: int) -> dict[str, list[ImageRecord]]:
    """``train``/``val`` records as ``fit`` splits ``train/``, and ``test`` when the folder has one;
    the scan's summary is logged, as ``fit`` prints it."""
    scans = {split: scan_split(data_dir / split, class_names) for split in ("train", "test") if (data_dir / split).is_dir()}
    log.info("Dataset %r:\n%s", str(data_dir), format_summary(scans))
    train = scans["train"].records
    train_idx, val_idx = stratified_split(train, val_fraction, seed)
    splits = {"train": [train[i] for i in train_idx], "val": [train[i] for i in val_idx]}
    if "test" in scans:
        splits["test"] = scans["test"].records
    return {split: records for split, records in splits.items() if records}


def _split_labels_file(csv_path: Path, val_fraction: float, seed: int) -> tuple[list[str], dict[str, list[ImageRecord]]]:
    """A labels file's class names and its ``train``/``val``/``test`` records as ``fit`` splits them
    (its own ``val`` rows, else iterative stratification); the scan's summary is logged."""
    rows = read_labels_file(csv_path)
    class_names = class_names_of(rows, csv_path)
    present = [split for split in ("train", "val", "test") if any(row.split == split for row in rows)]
    scans = {split: scan_rows(rows, split, class_names, csv_path) for split in present}
    log.info("Dataset %r:\n%s", str(csv_path), format_summary(scans))
    splits = {split: scans[split].records for split in present}
    if "val" not in splits:
        train = splits["train"]
        train_idx, val_idx = multilabel_split(train, val_fraction, seed)
        splits["train"], splits["val"] = [train[i] for i in train_idx], [train[i] for i in val_idx]
    return class_names, {split: records for split, records in splits.items() if records}


def _refuse_existing(output: str) -> None:
    if is_remote(output):
        try:
            read_info(output)
        except UserInputError:
            return
    else:
        path = Path(output).expanduser()
        if not path.exists() or (path.is_dir() and not any(path.iterdir())):
            return
    raise UserInputError(
        f"{output!r} already holds data (a stream has {METADATA}): optimizing into it would mix two datasets. "
        "Give a new location, or delete the old one first."
    )

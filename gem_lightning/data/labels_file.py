"""A labels file: photos with any number of labels each, listed in a CSV instead of sorted into class folders.

Columns (a header row names them; ``split`` is optional)::

    path    the photo, relative to the CSV's folder (or absolute)
    labels  its class names, separated by ``;`` (``Ruby;Diamond``)
    split   train | val | test (default train; ``val`` rows replace the data module's own split)

Class names are the union of every row's labels, sorted (the label order). The scan reports, one line
each, rows naming missing files, rows without a label and files that are not usable images, as the
folder scan does.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import torch

from gem_lightning.data.scan import DatasetLayoutError, ImageRecord, Rejected, SplitScan, file_digest, probe_file

COLUMNS = ("path", "labels", "split")
SPLITS = ("train", "val", "test")
SEPARATOR = ";"


class LabelsFileError(DatasetLayoutError):
    """The labels file cannot be read as written."""


@dataclass(frozen=True)
class LabelRow:
    """One row: the photo, its label names, its split and its line in the file (for messages)."""

    path: Path
    labels: tuple[str, ...]
    split: str
    line: int


def is_labels_file(location: str | Path | None) -> bool:
    """Whether ``data.data_dir`` names a labels file (a ``.csv`` file) rather than a folder."""
    return bool(location) and str(location).lower().endswith(".csv")


def read_labels_file(csv_path: Path) -> list[LabelRow]:
    """Every row of ``csv_path``, its paths resolved against the file's folder.

    Raises:
        LabelsFileError: the file is missing or unreadable, lacks a ``path`` or ``labels`` column, has a
            column other than ``path``, ``labels`` and ``split``, or a row names another split.
    """
    if not csv_path.is_file():
        raise LabelsFileError(f"labels file {str(csv_path)!r} does not exist. {__doc__.splitlines()[0]}")
    try:
        with csv_path.open(newline="", encoding="utf-8-sig") as file:
            reader = csv.DictReader(file)
            header = [name.strip() for name in reader.fieldnames or []]
            _check_columns(csv_path, header)
            return [_row(csv_path, row, line) for line, row in enumerate(reader, start=2)]
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise LabelsFileError(f"labels file {str(csv_path)!r} cannot be read as a CSV: {error}.") from None


def _check_columns(csv_path: Path, header: list[str]) -> None:
    unknown = [name for name in header if name not in COLUMNS]
    missing = [name for name in COLUMNS[:2] if name not in header]
    if unknown or missing:
        problem = f"unknown column(s) {', '.join(map(repr, unknown))}" if unknown else f"no {' or '.join(map(repr, missing))} column"
        raise LabelsFileError(
            f"labels file {str(csv_path)!r} has {problem}: its header must name path, labels and optionally split "
            f"(found: {', '.join(header) or 'nothing'})."
        )


def _row(csv_path: Path, row: dict[str, str | None], line: int) -> LabelRow:
    split = (row.get("split") or "train").strip()
    if split not in SPLITS:
        raise LabelsFileError(f"labels file {str(csv_path)!r}, line {line}: split {split!r} is not one of {', '.join(SPLITS)}.")
    labels = tuple(sorted({name.strip() for name in (row.get("labels") or "").split(SEPARATOR) if name.strip()}))
    path = Path((row.get("path") or "").strip()).expanduser()
    return LabelRow(path if path.is_absolute() else csv_path.parent / path, labels, split, line)


def class_names_of(rows: list[LabelRow], csv_path: Path) -> list[str]:
    """The union of the training rows' labels, sorted; test rows may not bring new ones."""
    names = sorted({name for row in rows if row.split != "test" for name in row.labels})
    if len(names) < 2:
        raise LabelsFileError(f"labels file {str(csv_path)!r} names {len(names)} class(es) in its training rows; a classifier needs two.")
    unknown = sorted({name for row in rows if row.split == "test" for name in row.labels} - set(names))
    if unknown:
        raise LabelsFileError(
            f"labels file {str(csv_path)!r}: test rows name classes no training row has: {', '.join(unknown)}. "
            "Every test class needs training photos."
        )
    return names


def scan_rows(rows: list[LabelRow], split: str, class_names: list[str], csv_path: Path) -> SplitScan:
    """Probe and hash the photos of ``split``'s rows: usable records, and what is left out with why."""
    scan = SplitScan(root=csv_path.parent, classes=class_names)
    index = {name: label for label, name in enumerate(class_names)}
    for row in rows:
        if row.split != split:
            continue
        reason = _row_problem(row, csv_path)
        if reason is None:
            labels = tuple(index[name] for name in row.labels)
            scan.records.append(ImageRecord(row.path, labels[0], file_digest(row.path), labels=labels))
        else:
            scan.rejected.append(Rejected(row.path, reason))
    return scan


def _row_problem(row: LabelRow, csv_path: Path) -> str | None:
    where = f"{csv_path.name} line {row.line}"
    if not row.labels:
        return f"no label ({where}): give its classes, separated by ';'"
    if not row.path.is_file():
        return f"missing file ({where})"
    reason = probe_file(row.path)
    return f"{reason} ({where})" if reason else None


def multi_hot(labels: tuple[int, ...], num_classes: int) -> torch.Tensor:
    """``(num_classes,)`` float32 with ones at ``labels``: a multi-label target."""
    target = torch.zeros(num_classes)
    target[list(labels)] = 1.0
    return target

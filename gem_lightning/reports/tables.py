"""Per-class metrics as a CSV table, for spreadsheets and for diffing two runs.

Kept apart from :mod:`~gem_lightning.reports.confusion` so that the numbers stay free of file
formats; the ``repr`` of each float keeps every digit, so a table read back equals the metrics.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from gem_lightning.reports.confusion import per_class_metrics

#: Columns of the per-class CSV, in order.
PER_CLASS_FIELDS = ("class", "precision", "recall", "f1", "support")


def write_per_class_csv(confusion: np.ndarray, class_names: list[str], path: Path) -> Path:
    """Write :func:`per_class_metrics` (one row per class, named) to a CSV file.

    Creates the parent folder of ``path`` and returns ``path``.
    """
    rows = per_class_metrics(confusion, class_names)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=PER_CLASS_FIELDS)
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, **{k: repr(row[k]) for k in ("precision", "recall", "f1")}})
    return path

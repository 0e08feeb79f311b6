"""A grid of predicted photos drawn from a predictions CSV, so a person sees at a glance what ``predict`` said."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

from gem_lightning.data.images import load_rgb
from gem_lightning.reports.grids import prediction_grid_png


def write_prediction_grid(predictions_csv: Path, out_png: Path, class_names: Sequence[str], max_images: int = 25) -> Path:
    """Draw predicted photos from a :class:`~gem_lightning.training.callbacks.prediction_writer.PredictionWriter`
    CSV, titled with their predictions.

    When a photo's parent folder is one of ``class_names`` (a ``test/<Class>/`` folder), that is
    taken as its true class and the title is green or red; otherwise it is black. With more rows
    than ``max_images``, evenly spaced rows are drawn, so a folder sorted by class shows many
    classes rather than the first one only.

    Args:
        predictions_csv: the writer's CSV (columns ``path``, ``prediction``, ``probability``, ...).
        out_png: the grid to write.
        class_names: the model's classes, to recognise class-named folders.
        max_images: at most this many photos are drawn.

    Returns:
        ``out_png``.
    """
    with Path(predictions_csv).open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    known = set(class_names)
    items = [
        (Path(row["path"]), row["prediction"], _folder_class(row["path"], known), float(row["probability"]))
        for row in _evenly_spaced(rows, max_images)
    ]
    return prediction_grid_png(items, Path(out_png), max_images=max_images, image_loader=load_rgb)


def _folder_class(path: str, class_names: set[str]) -> str | None:
    """The name of ``path``'s parent folder if it is a class name, else None (truth unknown)."""
    parent = Path(path).parent.name
    return parent if parent in class_names else None


def _evenly_spaced(rows: list[dict[str, str]], count: int) -> list[dict[str, str]]:
    """``count`` rows spread evenly over ``rows`` (all of them when there are no more)."""
    if len(rows) <= count:
        return rows
    return [rows[i * len(rows) // count] for i in range(count)]

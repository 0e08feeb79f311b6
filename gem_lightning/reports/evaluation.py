"""The evaluation report folder: from per-image results to every file in ``report-<stage>/``.

Confusion matrix, gallery and list of misclassified photos, reliability diagram, per-class metrics,
most-confused pairs, headline metrics and ``report.md`` linking them. Plain arrays, paths and class
names in, files out (no Lightning), so a notebook can write a report too; the
:class:`~gem_lightning.training.callbacks.reports.EvaluationReport` callback gathers the inputs.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from gem_lightning.data.images import load_rgb
from gem_lightning.reports.calibration import reliability_diagram_png
from gem_lightning.reports.confusion import most_confused_pairs, per_class_metrics
from gem_lightning.reports.confusion_figure import confusion_matrix_png
from gem_lightning.reports.grids import misclassified_gallery_png
from gem_lightning.reports.markdown import write_markdown_report
from gem_lightning.reports.tables import write_per_class_csv


class SampleResult(NamedTuple):
    """What the report needs to know about one evaluated image."""

    index: int
    """Position in the stage's dataset; ``datamodule.paths(stage)[index]`` is its file."""
    target: int
    prediction: int
    probability: float
    """Probability of the predicted class."""


class Reliability(NamedTuple):
    """What the reliability diagram draws: every photo's top-1 probability and whether it was right."""

    confidences: Sequence[float]
    correct: Sequence[bool]
    ece: float | None
    """The logged expected calibration error, written on the diagram (None: not logged)."""
    bins: int
    """Confidence bins, as many as the logged error used."""


def confusion_matrix(results: Sequence[SampleResult], num_classes: int) -> np.ndarray:
    """Counts of (true, predicted) pairs; rows are true classes."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    for result in results:
        matrix[result.target, result.prediction] += 1
    return matrix


def misclassified_items(
    results: Sequence[SampleResult], paths: Sequence[Path] | None, class_names: Sequence[str]
) -> list[tuple[Path, str, str, float]] | None:
    """``(file, true name, predicted name, probability)`` of every wrong prediction, most confident first.

    None (no gallery) when ``paths`` is None.
    """
    if paths is None:
        return None
    wrong = sorted((r for r in results if r.prediction != r.target), key=lambda r: (-r.probability, r.index))
    return [(Path(paths[r.index]), class_names[r.target], class_names[r.prediction], r.probability) for r in wrong]


def write_evaluation_report(
    out_dir: Path,
    *,
    stage: str,
    confusion: np.ndarray,
    class_names: list[str],
    metrics: dict[str, float | int],
    misclassified: list[tuple[Path, str, str, float]] | None,
    reliability: Reliability | None = None,
    max_gallery: int = 36,
    top_pairs: int = 15,
    overlays: Sequence[np.ndarray | None] | None = None,
) -> dict[str, Path]:
    """Write every report file into ``out_dir``, and ``report.md`` linking them.

    Args:
        out_dir: the report folder (created).
        stage: ``val`` or ``test``; goes into titles and ``metrics.json``.
        confusion: ``C x C`` counts, rows = true class, columns = predicted class.
        class_names: one name per row of ``confusion``.
        metrics: headline metrics for ``metrics.json`` and the report's table.
        misclassified: ``(file, true name, predicted name, probability)`` of every wrong
            prediction, in gallery order; None leaves the gallery and its CSV out.
        reliability: what the reliability diagram draws; None leaves it out.
        max_gallery: at most this many misclassified photos are drawn.
        top_pairs: how many most-confused pairs are listed.
        overlays: where the model looked, one per drawn misclassified photo (None: the photos alone).

    Returns:
        The written files by their title in ``report.md``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pairs = most_confused_pairs(confusion, class_names, k=top_pairs)
    files = {
        "Confusion matrix": confusion_matrix_png(
            confusion, class_names, out_dir / "confusion_matrix.png", title=f"Confusion matrix ({stage})"
        )
    }
    if misclassified is not None:
        files["Misclassified images"] = misclassified_gallery_png(
            misclassified, out_dir / "misclassified.png", max_images=max_gallery, image_loader=load_rgb, overlays=overlays
        )
        files["Every misclassified image (CSV)"] = _write_misclassified_csv(misclassified, out_dir / "misclassified.csv")
    if reliability is not None:
        files["Reliability diagram"] = reliability_diagram_png(
            reliability.confidences, reliability.correct, out_dir / "reliability.png", ece=reliability.ece, bins=reliability.bins
        )
    files["Per-class metrics (CSV)"] = write_per_class_csv(confusion, class_names, out_dir / "per_class.csv")
    files["Most confused pairs (CSV)"] = _write_pairs_csv(pairs, out_dir / "confused_pairs.csv")
    files["Headline metrics (JSON)"] = _write_json({"stage": stage, **metrics}, out_dir / "metrics.json")
    files["Report"] = write_markdown_report(
        out_dir / "report.md",
        title=f"Evaluation report: {stage}",
        metrics=metrics,
        files=files,
        confused_pairs=pairs,
        per_class_rows=per_class_metrics(confusion, class_names),
    )
    return files


def _write_pairs_csv(pairs: Sequence[tuple[str, str, int, float]], path: Path) -> Path:
    """The most-confused pairs as CSV: true, predicted, count, share of the true class."""
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["true", "predicted", "count", "share_of_true"])
        writer.writerows([true, predicted, count, repr(share)] for true, predicted, count, share in pairs)
    return path


def _write_misclassified_csv(items: Sequence[tuple[Path, str, str, float]], path: Path) -> Path:
    """All misclassified files (the gallery draws only the first few): path, true, predicted, probability."""
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "true", "predicted", "probability"])
        writer.writerows([str(file), true, predicted, f"{probability:.6f}"] for file, true, predicted, probability in items)
    return path


def _write_json(data: dict[str, Any], path: Path) -> Path:
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return path

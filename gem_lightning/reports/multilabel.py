"""The evaluation report of a multi-label model: average precision and precision-recall curve per label.

Plain tensors and class names in, files out: ``per_label.csv`` (AP, F1 at the stored threshold,
the threshold, positives), ``pr_curves.png`` and ``metrics.json``.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import torch
from torchmetrics.functional.classification import (
    binary_precision_recall_curve,
    multilabel_average_precision,
    multilabel_f1_score,
    multilabel_precision_recall_curve,
)

from gem_lightning.reports.canvas import GRID_DPI, message_png, new_figure, save_png

HIGHLIGHTED = 5
"""How many labels of lowest AP the curves figure names."""


def write_multilabel_report(
    out_dir: Path, *, probs: torch.Tensor, targets: torch.Tensor, thresholds: torch.Tensor, class_names: list[str], metrics: dict
) -> dict[str, Path]:
    """Write the report files for ``(N, C)`` probabilities and 0/1 targets into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    targets = targets.int()
    num_labels = len(class_names)
    ap = multilabel_average_precision(probs, targets, num_labels, average=None) if len(probs) else torch.zeros(num_labels)
    f1 = multilabel_f1_score((probs >= thresholds).int(), targets, num_labels, average=None) if len(probs) else torch.zeros(num_labels)
    files = {"per_label": out_dir / "per_label.csv", "curves": out_dir / "pr_curves.png", "metrics": out_dir / "metrics.json"}
    with files["per_label"].open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["label", "average_precision", "f1", "threshold", "positives"])
        for label, name in enumerate(class_names):
            writer.writerow([name, f"{ap[label]:.4f}", f"{f1[label]:.4f}", f"{thresholds[label]:.4f}", int(targets[:, label].sum())])
    pr_curves_png(probs, targets, ap, class_names, files["curves"])
    files["metrics"].write_text(json.dumps(metrics, indent=2) + "\n")
    return files


def pr_curves_png(probs: torch.Tensor, targets: torch.Tensor, ap: torch.Tensor, class_names: list[str], path: Path) -> Path:
    """Every label's precision-recall curve (grey), the lowest-AP ones named, and the micro-average (black)."""
    if not len(probs) or not targets.any():
        return message_png("No positive labels to draw", path)
    precision, recall, _ = multilabel_precision_recall_curve(probs, targets, len(class_names))
    fig = new_figure(7.0, 6.0)
    axes = fig.add_subplot()
    worst = set(ap.argsort()[:HIGHLIGHTED].tolist())
    for label, (p, r) in enumerate(zip(precision, recall)):
        if targets[:, label].any():
            named = label in worst
            axes.plot(
                r,
                p,
                color=None if named else "0.8",
                linewidth=1.5 if named else 0.6,
                label=f"{class_names[label]} (AP {ap[label]:.2f})" if named else None,
            )
    micro_p, micro_r, _ = binary_precision_recall_curve(probs.flatten(), targets.flatten())
    axes.plot(micro_r, micro_p, color="black", linewidth=2, label="all labels (micro)")
    axes.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title="Precision-recall per label")
    axes.legend(loc="lower left", fontsize=8)
    return save_png(fig, path, dpi=GRID_DPI)

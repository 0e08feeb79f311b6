"""The reliability diagram: how often the model is right at each level of confidence it states."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from gem_lightning.reports.canvas import GRID_DPI, message_png, new_figure, save_png


def reliability_bins(confidences: Sequence[float], correct: Sequence[bool], bins: int = 15) -> list[tuple[float, float, float, int]]:
    """``(bin low edge, mean confidence, accuracy, count)`` of each non-empty equal-width confidence bin."""
    confidences, correct = np.asarray(confidences, dtype=float), np.asarray(correct, dtype=float)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidences, edges[1:-1], right=True), 0, bins - 1)  # (low, high], as torchmetrics bins
    return [
        (float(edges[b]), float(confidences[which == b].mean()), float(correct[which == b].mean()), int((which == b).sum()))
        for b in range(bins)
        if (which == b).any()
    ]


def reliability_diagram_png(
    confidences: Sequence[float], correct: Sequence[bool], path: Path, *, ece: float | None = None, bins: int = 15
) -> Path:
    """Accuracy against stated confidence per bin, beside the diagonal a calibrated model follows; bar
    shade shows how many photos fall in each bin."""
    if len(confidences) == 0:
        return message_png("No predictions to draw.", path)
    rows = reliability_bins(confidences, correct, bins)
    width = 1.0 / bins
    fig = new_figure(4.6, 4.4)
    ax = fig.add_subplot(1, 1, 1)
    counts = np.array([count for *_, count in rows], dtype=float)
    shades = 0.35 + 0.65 * counts / counts.max()
    ax.bar(
        [low for low, *_ in rows],
        [accuracy for _, _, accuracy, _ in rows],
        width=width,
        align="edge",
        color=[(0.2, 0.4, 0.8, s) for s in shades],
        edgecolor="black",
        linewidth=0.5,
        label="accuracy in the bin",
    )
    ax.plot(
        [mean for _, mean, *_ in rows], [accuracy for _, _, accuracy, _ in rows], "o", color="black", markersize=3, label="mean confidence"
    )
    ax.plot([0, 1], [0, 1], "--", color="grey", linewidth=1, label="calibrated")
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="stated confidence (top-1 probability)", ylabel="accuracy")
    title = "Reliability diagram" + (f" (ECE {ece:.3f})" if ece is not None else "")
    ax.set_title(f"{title}\n{len(confidences)} photos, {bins} bins", fontsize=10)
    ax.legend(loc="upper left", fontsize=8)
    return save_png(fig, path, dpi=GRID_DPI)

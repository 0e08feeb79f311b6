"""The confusion-matrix figure: row-normalised, clustered, and legible at about 100 classes.

A plain heat map of 88 alphabetically sorted classes hides which classes are mistaken for each
other; here rows and columns follow :func:`~gem_lightning.reports.confusion.cluster_order` and
the figure grows with the class count, so that the mistakes a person should look at stand out.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.colors import PowerNorm
from matplotlib.figure import Figure
from matplotlib.image import AxesImage
from matplotlib.patches import Rectangle

from gem_lightning.reports.canvas import message_png, new_figure, save_png
from gem_lightning.reports.confusion import check_confusion, check_names, cluster_order, confusion_clusters, row_normalise

#: Width/height of one confusion-matrix cell in inches; 88 classes -> ~14 in.
CM_INCHES_PER_CLASS = 0.16
#: Smallest confusion-matrix side in inches, so tiny matrices stay legible.
CM_MIN_INCHES = 6.0
#: Resolution of the confusion matrix (large, meant to be zoomed into).
CM_DPI = 150


def confusion_matrix_png(
    confusion: np.ndarray,
    class_names: list[str],
    path: Path,
    *,
    title: str = "",
) -> Path:
    """Draw the row-normalised confusion matrix, clustered, readable at ~100 classes.

    * Cells show ``P(pred | true)``; a square-root colour scale makes small but real
      confusions visible next to a near-1 diagonal.
    * Rows and columns use :func:`cluster_order`; each group of mutually confused
      classes is outlined on the diagonal.
    * Every row label ends with that class's recall (diagonal accuracy) in percent,
      so accuracy is readable without decoding colours. Small matrices also print
      the value in every non-zero cell.
    * The figure grows with the class count (:data:`CM_INCHES_PER_CLASS` per class,
      at least :data:`CM_MIN_INCHES`) so 88 names fit without overlapping.

    Creates the parent folder of ``path`` and returns ``path``.
    """
    cm = check_confusion(confusion)
    names = check_names(cm, class_names)
    n = cm.shape[0]
    if n == 0:
        return message_png("empty confusion matrix", path)

    order = cluster_order(cm)
    norm = row_normalise(cm)[np.ix_(order, order)]
    side = max(CM_MIN_INCHES, CM_INCHES_PER_CLASS * n)
    cell_pt = side * 72.0 / n
    label_fs = float(np.clip(cell_pt * 0.62, 5.0, 10.0))
    # Axes fill the figure; tick labels, titles and colour bar extend past it and
    # bbox_inches="tight" grows the saved image to hold them.
    fig = new_figure(side + 0.8, side)
    ax = fig.add_axes((0.0, 0.0, 1.0, 1.0))
    image = ax.imshow(norm, cmap="Blues", norm=PowerNorm(gamma=0.5, vmin=0.0, vmax=1.0), interpolation="nearest", aspect="equal")
    _label_classes(ax, [names[i] for i in order], np.diag(norm), label_fs)
    _minor_grid(ax, n)
    _outline_clusters(ax, [len(g) for g in confusion_clusters(cm)])
    _annotate_cells(ax, norm, cm[np.ix_(order, order)], cell_pt)
    ax.set_title(_heading(cm, title), fontsize=label_fs + 5, pad=10)
    _colour_bar(fig, image, ax, label_fs)
    return save_png(fig, path, dpi=CM_DPI)


def _label_classes(ax: Axes, names: list[str], recall: np.ndarray, fontsize: float) -> None:
    """Name every column, and every row with its recall appended; label both axes."""
    n = len(names)
    ticks = np.arange(n)
    ax.set_xticks(ticks)
    ax.set_yticks(ticks)
    ax.set_xticklabels(names, rotation=90, fontsize=fontsize)
    ax.set_yticklabels(
        [f"{name}  {recall[k]:4.0%}" for k, name in enumerate(names)], fontsize=fontsize, family="monospace" if n > 30 else None
    )
    ax.tick_params(length=2, pad=1)
    ax.set_xlabel("predicted class", fontsize=fontsize + 3)
    ax.set_ylabel("true class  (recall)", fontsize=fontsize + 3)


def _heading(cm: np.ndarray, title: str) -> str:
    """The figure title: ``title`` (or a default) over class count, accuracy and sample count."""
    accuracy = float(np.trace(cm) / cm.sum()) if cm.sum() > 0 else 0.0
    heading = title or "Confusion matrix"
    return (
        f"{heading}\nrow-normalised, {cm.shape[0]} classes, accuracy {accuracy:.1%}, "
        f"{int(cm.sum())} samples; classes grouped by mutual confusion"
    )


def _colour_bar(fig: Figure, image: AxesImage, ax: Axes, fontsize: float) -> None:
    """A slim colour bar beside the matrix that says what the colours mean."""
    bar = fig.colorbar(image, ax=ax, fraction=0.03, pad=0.01, shrink=0.6)
    bar.set_label("fraction of true class", fontsize=fontsize + 3)
    bar.ax.tick_params(labelsize=fontsize + 2)


def _minor_grid(ax: Axes, n: int) -> None:
    """Faint lines between cells so a row can be followed across a wide matrix."""
    ax.set_xticks(np.arange(-0.5, n, 1.0), minor=True)
    ax.set_yticks(np.arange(-0.5, n, 1.0), minor=True)
    ax.grid(which="minor", color="#dddddd", linewidth=0.3)
    ax.tick_params(which="minor", length=0)


def _outline_clusters(ax: Axes, group_sizes: Iterable[int]) -> None:
    """Draw a box on the diagonal around every group of two or more classes."""
    start = 0
    for size in group_sizes:
        if size > 1:
            ax.add_patch(Rectangle((start - 0.5, start - 0.5), size, size, fill=False, edgecolor="#d4a017", linewidth=1.0))
        start += size


def _annotate_cells(ax: Axes, norm: np.ndarray, counts: np.ndarray, cell_pt: float) -> None:
    """Write percentages into cells when they are large enough to hold text.

    Diagonal cells always get their percentage (recall); off-diagonal cells only
    when the matrix is small enough for the numbers to be legible.
    """
    n = norm.shape[0]
    fs = float(np.clip(cell_pt * 0.36, 3.5, 9.0))
    show_off_diag = n <= 30
    for i in range(n):
        for j in range(n):
            if counts[i, j] == 0 or (i != j and not show_off_diag):
                continue
            value = norm[i, j]
            text = f"{value * 100:.0f}"
            colour = "white" if value > 0.45 else "black"
            ax.text(j, i, text, ha="center", va="center", fontsize=fs, color=colour)

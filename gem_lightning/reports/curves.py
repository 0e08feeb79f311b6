"""Learning curves: read a Lightning CSVLogger ``metrics.csv`` and plot loss and accuracy per epoch.

``metrics.csv`` is sparse (each row holds only what was logged at that moment) and may hold
per-step values; reading it into one point per epoch is what makes the plot readable.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes

from gem_lightning.reports.canvas import GRID_DPI, new_figure, save_png

#: Column preference per curve: epoch-level names first, then the plain key.
_CURVE_COLUMNS: dict[str, tuple[str, ...]] = {
    "train/loss": ("train/loss_epoch", "train/loss"),
    "val/loss": ("val/loss_epoch", "val/loss"),
    "train/acc": ("train/acc_epoch", "train/acc"),
    "val/acc": ("val/acc_epoch", "val/acc"),
}

Curves = dict[str, tuple[np.ndarray, np.ndarray]]


def read_epoch_curves(metrics_csv: Path) -> Curves:
    """Read a Lightning CSVLogger ``metrics.csv`` into ``{curve: (epochs, values)}``.

    Rows are sparse (each holds only the metrics logged at that moment), so each
    curve is gathered from the rows where its column is filled. If a column holds
    several values for one epoch (e.g. logged per step) they are averaged.
    Curves with no values are left out.
    """
    path = Path(metrics_csv)
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        header = reader.fieldnames or []
        rows = list(reader)
    if "epoch" not in header:
        raise ValueError(f"{path}: no 'epoch' column, not a Lightning metrics.csv")
    curves: Curves = {}
    for curve, candidates in _CURVE_COLUMNS.items():
        for column in candidates:
            if column in header:
                points = _epoch_means(rows, column)
                if points[0].size:
                    curves[curve] = points
                    break
    return curves


def _epoch_means(rows: list[dict], column: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-epoch mean of the filled, numeric cells of ``column``."""
    by_epoch: dict[int, list[float]] = {}
    for row in rows:
        epoch, value = _to_float(row.get("epoch")), _to_float(row.get(column))
        if epoch is None or value is None:
            continue
        by_epoch.setdefault(int(epoch), []).append(value)
    epochs = np.asarray(sorted(by_epoch), dtype=np.int64)
    values = np.asarray([float(np.mean(by_epoch[e])) for e in epochs], dtype=np.float64)
    return epochs, values


def _to_float(cell: str | None) -> float | None:
    """Parse a CSV cell as a finite float, ``None`` if empty or not a number."""
    if cell is None or cell.strip() == "":
        return None
    try:
        value = float(cell)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def learning_curves_png(metrics_csv: Path, path: Path) -> Path:
    """Plot loss and accuracy per epoch (train and validation) from ``metrics.csv``.

    Raises ``ValueError`` naming the file when it has none of the train/val loss or
    accuracy columns (or they are all empty), since an empty plot would hide that.
    Creates the parent folder of ``path`` and returns ``path``.
    """
    curves = read_epoch_curves(metrics_csv)
    if not curves:
        wanted = ", ".join(c for cols in _CURVE_COLUMNS.values() for c in cols)
        raise ValueError(f"{metrics_csv}: no usable metric columns (looked for {wanted})")
    fig = new_figure(11.0, 4.2)
    for k, (kind, label) in enumerate((("loss", "loss"), ("acc", "accuracy"))):
        _plot_metric(fig.add_subplot(1, 2, k + 1), curves, kind, label)
    fig.suptitle(f"Learning curves ({Path(metrics_csv).name})")
    fig.tight_layout()
    return save_png(fig, path, dpi=GRID_DPI)


def _plot_metric(ax: Axes, curves: Curves, kind: str, label: str) -> None:
    """Train and validation curves of one metric (``loss`` or ``acc``) on ``ax``, or a note that
    neither was logged."""
    drawn = False
    for split, colour in (("train", "tab:blue"), ("val", "tab:orange")):
        key = f"{split}/{kind}"
        if key in curves:
            epochs, values = curves[key]
            ax.plot(epochs, values, marker="o", markersize=3, color=colour, label=split)
            drawn = True
    if drawn:
        ax.legend()
    else:
        ax.text(0.5, 0.5, f"no {label} logged", ha="center", va="center", transform=ax.transAxes, color="grey")
    ax.set_xlabel("epoch")
    ax.set_ylabel(label)
    ax.set_title(label.capitalize())
    ax.grid(alpha=0.3)
    ax.xaxis.get_major_locator().set_params(integer=True)

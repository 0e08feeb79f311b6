"""Turn evaluation results into files a person can open (PNG, CSV, Markdown).

Everything here is a pure function of numpy arrays, lists and paths: no Lightning,
no torch, no global plotting state. Figures are drawn on a bare
:class:`matplotlib.figure.Figure` attached to an Agg canvas, so the module works on
headless machines and never touches ``pyplot``'s global figure registry.

Conventions
-----------
* A confusion matrix is a ``C x C`` array of counts, rows = true class,
  columns = predicted class.
* Metrics follow torchmetrics' ``zero_division=0``: a ratio whose denominator is
  zero is reported as ``0.0``.
* Every writer creates the parent folder of ``path`` and returns ``path``.
"""

from __future__ import annotations

import csv
import math
import os
import textwrap
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import PowerNorm
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from PIL import Image

ImageLoader = Callable[[Path], Image.Image]

#: Width/height of one confusion-matrix cell in inches; 88 classes -> ~14 in.
CM_INCHES_PER_CLASS = 0.16
#: Smallest confusion-matrix side in inches, so tiny matrices stay legible.
CM_MIN_INCHES = 6.0
#: Resolution of the confusion matrix (large, meant to be zoomed into).
CM_DPI = 150
#: Resolution of thumbnail grids and curves.
GRID_DPI = 110
#: Longest edge of a thumbnail before it is drawn; keeps memory and files small.
THUMBNAIL_PX = 256

_CORRECT_COLOUR = "#1a7f37"  # green
_WRONG_COLOUR = "#cf222e"  # red
_UNKNOWN_COLOUR = "black"


# --------------------------------------------------------------------------- #
# Small shared helpers
# --------------------------------------------------------------------------- #
def _new_figure(width_in: float, height_in: float) -> Figure:
    """A fresh Figure on its own Agg canvas (no pyplot global state)."""
    fig = Figure(figsize=(width_in, height_in))
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: Path, *, dpi: int) -> Path:
    """Write ``fig`` as PNG to ``path`` (creating folders) and return ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, format="png", bbox_inches="tight", pad_inches=0.15)
    return path


def _message_png(message: str, path: Path) -> Path:
    """A small PNG that only says ``message``: the honest output for empty inputs."""
    fig = _new_figure(4.0, 1.5)
    fig.text(0.5, 0.5, message, ha="center", va="center", fontsize=12)
    return _save(fig, path, dpi=GRID_DPI)


def _check_confusion(confusion: np.ndarray) -> np.ndarray:
    """Validate a square, non-negative confusion matrix and return it as float64."""
    cm = np.asarray(confusion, dtype=np.float64)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"confusion must be a square 2-D array, got shape {cm.shape}")
    if cm.size and (not np.all(np.isfinite(cm)) or cm.min() < 0):
        raise ValueError("confusion must contain finite, non-negative counts")
    return cm


def _check_names(cm: np.ndarray, class_names: Sequence[str]) -> list[str]:
    """Ensure there is exactly one name per confusion-matrix row."""
    names = [str(n) for n in class_names]
    if len(names) != cm.shape[0]:
        raise ValueError(
            f"{len(names)} class names given for a {cm.shape[0]}x{cm.shape[0]} confusion matrix"
        )
    return names


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """Element-wise ``num / den`` with 0.0 where ``den == 0`` (zero_division=0)."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.zeros(np.broadcast(num, den).shape, dtype=np.float64)
    np.divide(num, den, out=out, where=den != 0)
    return out


def row_normalise(confusion: np.ndarray) -> np.ndarray:
    """Each row divided by its sum (the recall view); all-zero rows stay zero."""
    cm = _check_confusion(confusion)
    return _safe_div(cm, cm.sum(axis=1, keepdims=True))


def _default_loader(path: Path) -> Image.Image:
    """Open an image file as RGB (the project passes a more robust loader)."""
    with Image.open(path) as im:
        return im.convert("RGB")


def _thumbnail(path: Path, loader: ImageLoader) -> np.ndarray | None:
    """Load ``path`` as a small RGB uint8 array, or ``None`` if it cannot be read."""
    try:
        im = loader(Path(path)).convert("RGB")
    except Exception:  # noqa: BLE001 - one bad file must not sink a whole report
        return None
    im.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
    return np.asarray(im, dtype=np.uint8)


def _wrap(text: str, width: int) -> str:
    """Wrap each line of ``text`` at ``width`` characters without splitting words."""
    return "\n".join(
        textwrap.fill(line, width=width, break_long_words=False) or line
        for line in text.split("\n")
    )


def _grid_shape(n: int, ncols: int | None, max_cols: int) -> tuple[int, int]:
    """Rows and columns for ``n`` tiles: near-square unless ``ncols`` is given."""
    cols = ncols if ncols else min(max_cols, max(1, math.ceil(math.sqrt(n))))
    cols = max(1, min(cols, n))
    return math.ceil(n / cols), cols


def _draw_tiles(
    tiles: Sequence[np.ndarray | None],
    titles: Sequence[str],
    colours: Sequence[str],
    path: Path,
    *,
    ncols: int | None,
    max_cols: int,
    tile_in: tuple[float, float],
    fontsize: float,
    suptitle: str = "",
) -> Path:
    """Lay out images in a grid, each with a coloured title; ``None`` tiles say so."""
    rows, cols = _grid_shape(len(tiles), ncols, max_cols)
    fig = _new_figure(tile_in[0] * cols, tile_in[1] * rows + (0.5 if suptitle else 0.0))
    for i in range(rows * cols):
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.set_axis_off()
        if i >= len(tiles):
            continue
        if tiles[i] is None:
            ax.text(0.5, 0.5, "unreadable\nimage", ha="center", va="center",
                    fontsize=fontsize, color="grey", transform=ax.transAxes)
        else:
            ax.imshow(tiles[i], interpolation="antialiased")
        ax.set_title(titles[i], fontsize=fontsize, color=colours[i], pad=3)
    if suptitle:
        fig.suptitle(suptitle, fontsize=fontsize + 3)
    fig.tight_layout()
    return _save(fig, path, dpi=GRID_DPI)


def _percent(prob: float) -> str:
    """A probability in [0, 1] as a whole percentage, e.g. 0.874 -> '87%'."""
    return f"{float(prob):.0%}"


# --------------------------------------------------------------------------- #
# Ordering classes so that mutually confused ones sit together
# --------------------------------------------------------------------------- #
def confusion_similarity(confusion: np.ndarray) -> np.ndarray:
    """Symmetric class similarity: mean of the two row-normalised confusion rates.

    ``S[i, j] = (P(pred=j | true=i) + P(pred=i | true=j)) / 2`` with a zero
    diagonal. Row normalisation stops big classes from dominating the ordering.
    """
    norm = row_normalise(confusion)
    sim = (norm + norm.T) / 2.0
    np.fill_diagonal(sim, 0.0)
    return sim


def confusion_clusters(confusion: np.ndarray) -> list[list[int]]:
    """Groups of mutually confused classes, each in a chain-friendly order.

    Average-linkage agglomerative clustering on :func:`confusion_similarity`,
    numpy only. Merging stops when no two groups share any confusion, so each
    group is a connected set of confused classes and never-confused classes stay
    singletons. When two groups merge, the orientation (A+B, A+rev B, rev A+B,
    B+A) that puts the two most similar endpoints next to each other wins, so
    chains like a<->b<->c come out as a, b, c. Groups are returned sorted by
    their smallest class index, which keeps the original (usually alphabetical)
    order wherever there is nothing to group.
    """
    sim = confusion_similarity(confusion)
    n = sim.shape[0]
    groups: list[list[int] | None] = [[i] for i in range(n)]
    link = sim.copy()  # link[a, b] = sum of similarities between groups a and b
    sizes = np.ones(n, dtype=np.float64)
    active = np.ones(n, dtype=bool)
    for _ in range(max(0, n - 1)):
        avg = link / np.outer(sizes, sizes)
        avg[~active, :] = -1.0
        avg[:, ~active] = -1.0
        np.fill_diagonal(avg, -1.0)
        a, b = np.unravel_index(int(np.argmax(avg)), avg.shape)
        if avg[a, b] <= 0.0:
            break
        a, b = min(a, b), max(a, b)
        groups[a] = _join_chains(groups[a], groups[b], sim)  # type: ignore[arg-type]
        groups[b] = None
        link[a, :] += link[b, :]
        link[:, a] += link[:, b]
        sizes[a] += sizes[b]
        active[b] = False
    found = [g for g in groups if g is not None]
    return sorted(found, key=min)


def _join_chains(first: list[int], second: list[int], sim: np.ndarray) -> list[int]:
    """Concatenate two ordered groups in the orientation with the closest seam."""
    # (left part, right part): the seam is between left[-1] and right[0].
    candidates = [
        (first, second),
        (first, second[::-1]),
        (first[::-1], second),
        (second, first),
    ]
    seams = [sim[left[-1], right[0]] for left, right in candidates]
    left, right = candidates[int(np.argmax(seams))]
    return left + right


def cluster_order(confusion: np.ndarray) -> np.ndarray:
    """Permutation of class indices that puts mutually confused classes side by side."""
    cm = _check_confusion(confusion)
    if cm.shape[0] == 0:
        return np.zeros(0, dtype=np.int64)
    return np.asarray([i for g in confusion_clusters(cm) for i in g], dtype=np.int64)


# --------------------------------------------------------------------------- #
# Confusion matrix figure
# --------------------------------------------------------------------------- #
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
    """
    cm = _check_confusion(confusion)
    names = _check_names(cm, class_names)
    n = cm.shape[0]
    if n == 0:
        return _message_png("empty confusion matrix", path)

    order = cluster_order(cm)
    norm = row_normalise(cm)[np.ix_(order, order)]
    counts = cm[np.ix_(order, order)]
    recall = np.diag(norm)
    accuracy = float(np.trace(cm) / cm.sum()) if cm.sum() > 0 else 0.0

    side = max(CM_MIN_INCHES, CM_INCHES_PER_CLASS * n)
    cell_pt = side * 72.0 / n
    label_fs = float(np.clip(cell_pt * 0.62, 5.0, 10.0))
    # Axes fill the figure; tick labels, titles and colour bar extend past it and
    # bbox_inches="tight" grows the saved image to hold them.
    fig = _new_figure(side + 0.8, side)
    ax = fig.add_axes((0.0, 0.0, 1.0, 1.0))
    image = ax.imshow(norm, cmap="Blues", norm=PowerNorm(gamma=0.5, vmin=0.0, vmax=1.0),
                      interpolation="nearest", aspect="equal")

    ticks = np.arange(n)
    ax.set_xticks(ticks)
    ax.set_yticks(ticks)
    ax.set_xticklabels([names[i] for i in order], rotation=90, fontsize=label_fs)
    ax.set_yticklabels([f"{names[i]}  {recall[k]:4.0%}" for k, i in enumerate(order)],
                       fontsize=label_fs, family="monospace" if n > 30 else None)
    ax.tick_params(length=2, pad=1)
    ax.set_xlabel("predicted class", fontsize=label_fs + 3)
    ax.set_ylabel("true class  (recall)", fontsize=label_fs + 3)
    _minor_grid(ax, n)
    _outline_clusters(ax, [len(g) for g in confusion_clusters(cm)])
    _annotate_cells(ax, norm, counts, cell_pt)

    heading = title or "Confusion matrix"
    ax.set_title(f"{heading}\nrow-normalised, {n} classes, accuracy {accuracy:.1%}, "
                 f"{int(cm.sum())} samples; classes grouped by mutual confusion",
                 fontsize=label_fs + 5, pad=10)
    bar = fig.colorbar(image, ax=ax, fraction=0.03, pad=0.01, shrink=0.6)
    bar.set_label("fraction of true class", fontsize=label_fs + 3)
    bar.ax.tick_params(labelsize=label_fs + 2)
    return _save(fig, path, dpi=CM_DPI)


def _minor_grid(ax, n: int) -> None:
    """Faint lines between cells so a row can be followed across a wide matrix."""
    ax.set_xticks(np.arange(-0.5, n, 1.0), minor=True)
    ax.set_yticks(np.arange(-0.5, n, 1.0), minor=True)
    ax.grid(which="minor", color="#dddddd", linewidth=0.3)
    ax.tick_params(which="minor", length=0)


def _outline_clusters(ax, group_sizes: Iterable[int]) -> None:
    """Draw a box on the diagonal around every group of two or more classes."""
    start = 0
    for size in group_sizes:
        if size > 1:
            ax.add_patch(Rectangle((start - 0.5, start - 0.5), size, size, fill=False,
                                   edgecolor="#d4a017", linewidth=1.0))
        start += size


def _annotate_cells(ax, norm: np.ndarray, counts: np.ndarray, cell_pt: float) -> None:
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


# --------------------------------------------------------------------------- #
# Per-class metrics and confused pairs
# --------------------------------------------------------------------------- #
def per_class_metrics(
    confusion: np.ndarray, class_names: Sequence[str] | None = None
) -> list[dict]:
    """Precision, recall, F1 and support for every class.

    Matches torchmetrics' multiclass metrics with ``average=None`` and
    ``zero_division=0``: precision is 0.0 for a class that is never predicted,
    recall is 0.0 for a class with no samples, F1 is 0.0 when both are 0.
    ``class`` is the class name when ``class_names`` is given, else the index.
    """
    cm = _check_confusion(confusion)
    labels: Sequence = _check_names(cm, class_names) if class_names is not None else range(len(cm))
    tp = np.diag(cm)
    predicted = cm.sum(axis=0)
    support = cm.sum(axis=1)
    precision = _safe_div(tp, predicted)
    recall = _safe_div(tp, support)
    f1 = _safe_div(2.0 * tp, predicted + support)  # == 2PR/(P+R), zero-safe
    return [
        {
            "class": label,
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(round(support[i])),
        }
        for i, label in enumerate(labels)
    ]


PER_CLASS_FIELDS = ("class", "precision", "recall", "f1", "support")


def write_per_class_csv(
    confusion: np.ndarray, class_names: list[str], path: Path
) -> Path:
    """Write :func:`per_class_metrics` (one row per class, named) to a CSV file."""
    rows = per_class_metrics(confusion, class_names)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=PER_CLASS_FIELDS)
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, **{k: repr(row[k]) for k in ("precision", "recall", "f1")}})
    return path


def most_confused_pairs(
    confusion: np.ndarray, class_names: list[str], k: int = 15
) -> list[tuple[str, str, int, float]]:
    """The ``k`` largest off-diagonal cells as (true, predicted, count, fraction).

    ``fraction`` is the share of the true class sent to the predicted class.
    Sorted by count, then fraction (both descending), then names for stability;
    cells with a zero count are never returned.
    """
    cm = _check_confusion(confusion)
    names = _check_names(cm, class_names)
    norm = row_normalise(cm)
    true_idx, pred_idx = np.nonzero(cm)
    pairs = [
        (names[t], names[p], int(round(cm[t, p])), float(norm[t, p]))
        for t, p in zip(true_idx.tolist(), pred_idx.tolist())
        if t != p
    ]
    pairs.sort(key=lambda r: (-r[2], -r[3], r[0], r[1]))
    return pairs[: max(0, k)]


# --------------------------------------------------------------------------- #
# Image grids
# --------------------------------------------------------------------------- #
def misclassified_gallery_png(
    items: list[tuple[Path, str, str, float]],
    path: Path,
    *,
    max_images: int = 36,
    image_loader: ImageLoader | None = None,
) -> Path:
    """Thumbnails of wrongly classified images, each titled with truth and prediction.

    ``items`` are ``(image path, true name, predicted name, predicted probability)``;
    the first ``max_images`` are drawn (callers sort, e.g. most confident first).
    Unreadable files become a grey "unreadable image" tile instead of an error.
    With no items a small PNG saying so is written, so the report link still works.
    """
    chosen = list(items)[: max(0, max_images)]
    if not chosen:
        return _message_png("no misclassified images", path)
    loader = image_loader or _default_loader
    tiles = [_thumbnail(p, loader) for p, _, _, _ in chosen]
    titles = [_wrap(f"true: {t}\npred: {pr} ({_percent(prob)})", 30)
              for _, t, pr, prob in chosen]
    return _draw_tiles(tiles, titles, [_WRONG_COLOUR] * len(chosen), path,
                       ncols=None, max_cols=6, tile_in=(2.3, 2.75), fontsize=9.5,
                       suptitle=f"Misclassified images ({len(chosen)} of {len(items)})")


def prediction_grid_png(
    items: list[tuple[Path, str, str | None, float]],
    path: Path,
    *,
    max_images: int = 25,
    image_loader: ImageLoader | None = None,
) -> Path:
    """A grid of images titled with their predicted class (the notebook's 5x5 view).

    ``items`` are ``(image path, predicted name, true name or None, probability)``.
    Correct predictions are titled in green, wrong ones in red with the true class
    added, and predictions whose truth is unknown in black.
    """
    chosen = list(items)[: max(0, max_images)]
    if not chosen:
        return _message_png("no images to show", path)
    loader = image_loader or _default_loader
    tiles, titles, colours = [], [], []
    for img_path, pred, true, prob in chosen:
        tiles.append(_thumbnail(img_path, loader))
        text = f"{pred} ({_percent(prob)})"
        if true is None:
            colours.append(_UNKNOWN_COLOUR)
        elif true == pred:
            colours.append(_CORRECT_COLOUR)
        else:
            text = f"pred: {text}\ntrue: {true}"
            colours.append(_WRONG_COLOUR)
        titles.append(_wrap(text, 30))
    return _draw_tiles(tiles, titles, colours, path, ncols=None, max_cols=5,
                       tile_in=(2.3, 2.75), fontsize=9.5)


def image_grid_png(
    images: list[np.ndarray],
    titles: list[str],
    path: Path,
    *,
    ncols: int | None = None,
    title: str = "",
) -> Path:
    """A generic grid of ``HxWx3`` uint8 images with one title each.

    Used for the augmentation preview ("original + N augmented") and for a sample
    training batch with its labels. Greyscale ``HxW`` and float images in [0, 1]
    are accepted too, since de-normalised tensors often arrive that way.
    """
    if len(images) != len(titles):
        raise ValueError(f"{len(images)} images but {len(titles)} titles")
    if not images:
        return _message_png(title or "no images", path)
    tiles = [_as_uint8_rgb(im) for im in images]
    return _draw_tiles(tiles, [_wrap(str(t), 30) for t in titles],
                       [_UNKNOWN_COLOUR] * len(tiles), path, ncols=ncols, max_cols=8,
                       tile_in=(2.2, 2.5), fontsize=9.5, suptitle=title)


def _as_uint8_rgb(image: np.ndarray) -> np.ndarray:
    """Coerce an image array to ``HxWx3`` uint8 (floats are taken to be in [0, 1])."""
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, axis=-1)
    if arr.ndim != 3 or arr.shape[-1] not in (1, 3, 4):
        raise ValueError(f"expected an HxWx3 image, got shape {arr.shape}")
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    arr = arr[..., :3]
    if arr.dtype != np.uint8:
        arr = np.clip(arr.astype(np.float64), 0.0, 1.0)
        arr = (arr * 255.0 + 0.5).astype(np.uint8)
    return arr


# --------------------------------------------------------------------------- #
# Learning curves
# --------------------------------------------------------------------------- #
#: Column preference per curve: epoch-level names first, then the plain key.
_CURVE_COLUMNS: dict[str, tuple[str, ...]] = {
    "train/loss": ("train/loss_epoch", "train/loss"),
    "val/loss": ("val/loss_epoch", "val/loss"),
    "train/acc": ("train/acc_epoch", "train/acc"),
    "val/acc": ("val/acc_epoch", "val/acc"),
}


def read_epoch_curves(metrics_csv: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
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
    curves: dict[str, tuple[np.ndarray, np.ndarray]] = {}
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
    """
    curves = read_epoch_curves(metrics_csv)
    if not curves:
        wanted = ", ".join(c for cols in _CURVE_COLUMNS.values() for c in cols)
        raise ValueError(f"{metrics_csv}: no usable metric columns (looked for {wanted})")
    fig = _new_figure(11.0, 4.2)
    for k, (kind, label) in enumerate((("loss", "loss"), ("acc", "accuracy"))):
        ax = fig.add_subplot(1, 2, k + 1)
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
            ax.text(0.5, 0.5, f"no {label} logged", ha="center", va="center",
                    transform=ax.transAxes, color="grey")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.set_title(label.capitalize())
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.suptitle(f"Learning curves ({Path(metrics_csv).name})")
    fig.tight_layout()
    return _save(fig, path, dpi=GRID_DPI)


# --------------------------------------------------------------------------- #
# Markdown report
# --------------------------------------------------------------------------- #
_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".gif", ".svg", ".webp"}


def write_markdown_report(
    path: Path,
    *,
    title: str,
    metrics: dict[str, float],
    files: dict[str, Path],
    confused_pairs: Sequence[tuple[str, str, int, float]],
    per_class_rows: Sequence[Mapping],
) -> Path:
    """Write one Markdown page summarising an evaluation.

    Sections: headline metrics table; every entry of ``files`` (images embedded,
    other files linked) with paths relative to the report's folder so the folder
    can be moved or zipped; the most confused pairs; a per-class table sorted by
    F1 ascending so the weakest classes come first.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines: list[str] = [f"# {title}", ""]
    lines += ["## Metrics", "", "| metric | value |", "| --- | ---: |"]
    lines += [f"| {_md(name)} | {_fmt(value)} |" for name, value in metrics.items()]
    lines.append("")
    for name, file_path in files.items():
        rel = _relative_link(Path(file_path), path.parent)
        lines += [f"## {_md(name)}", ""]
        if Path(file_path).suffix.lower() in _IMAGE_SUFFIXES:
            lines.append(f"![{_md(name)}]({rel})")
        else:
            lines.append(f"[{_md(Path(file_path).name)}]({rel})")
        lines.append("")
    lines += _confused_pairs_section(confused_pairs)
    lines += _per_class_section(per_class_rows)
    path.write_text("\n".join(lines).rstrip() + "\n", encoding="utf-8")
    return path


def _confused_pairs_section(pairs: Sequence[tuple[str, str, int, float]]) -> list[str]:
    """Markdown table of (true, predicted, count, share of true class)."""
    lines = ["## Most confused pairs", ""]
    if not pairs:
        return lines + ["No misclassifications.", ""]
    lines += ["| true | predicted | count | share of true class |", "| --- | --- | ---: | ---: |"]
    lines += [f"| {_md(t)} | {_md(p)} | {int(c)} | {float(f):.1%} |" for t, p, c, f in pairs]
    return lines + [""]


def _per_class_section(rows: Sequence[Mapping]) -> list[str]:
    """Markdown per-class table, worst F1 first (ties: larger support first)."""
    lines = ["## Per-class metrics (worst F1 first)", ""]
    if not rows:
        return lines + ["No per-class metrics.", ""]
    ordered = sorted(rows, key=lambda r: (float(r["f1"]), -int(r["support"]), str(r["class"])))
    lines += ["| class | precision | recall | F1 | support |", "| --- | ---: | ---: | ---: | ---: |"]
    lines += [
        f"| {_md(r['class'])} | {float(r['precision']):.3f} | {float(r['recall']):.3f} "
        f"| {float(r['f1']):.3f} | {int(r['support'])} |"
        for r in ordered
    ]
    return lines + [""]


def _relative_link(target: Path, base: Path) -> str:
    """``target`` relative to folder ``base``, with '/' separators and spaces escaped."""
    rel = os.path.relpath(Path(target).resolve(), Path(base).resolve())
    return Path(rel).as_posix().replace(" ", "%20")


def _md(value: object) -> str:
    """Text safe inside a Markdown table cell (pipes escaped, no newlines)."""
    return str(value).replace("|", "\\|").replace("\n", " ")


def _fmt(value: object) -> str:
    """Format a metric value: floats with 4 decimals, everything else as is."""
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.4f}"
    return _md(value)

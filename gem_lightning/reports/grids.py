"""Grids of photos with a coloured title each: misclassified gallery, prediction grid, any images.

Numbers say how often the model errs; these grids show on what. Unreadable files become a grey
tile rather than an error, since one bad photo must not sink a whole report.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from gem_lightning.reports.canvas import GRID_DPI, message_png, new_figure, save_png

ImageLoader = Callable[[Path], Image.Image]

#: Longest edge of a thumbnail before it is drawn; keeps memory and files small.
THUMBNAIL_PX = 256

_CORRECT_COLOUR = "#1a7f37"  # green
_WRONG_COLOUR = "#cf222e"  # red
_UNKNOWN_COLOUR = "black"


def misclassified_gallery_png(
    items: list[tuple[Path, str, str, float]],
    path: Path,
    *,
    max_images: int = 36,
    image_loader: ImageLoader | None = None,
    overlays: Sequence[np.ndarray | None] | None = None,
) -> Path:
    """Thumbnails of wrongly classified images, each titled with truth and prediction.

    ``items`` are ``(image path, true name, predicted name, predicted probability)``;
    the first ``max_images`` are drawn (callers sort, e.g. most confident first).
    ``overlays``, one per drawn item (or None), are drawn to the right of each photo: where the
    model looked for the class it predicted (``gem_lightning.reports.cam``).
    Unreadable files become a grey "unreadable image" tile instead of an error.
    With no items a small PNG saying so is written, so the report link still works.
    """
    chosen = list(items)[: max(0, max_images)]
    if not chosen:
        return message_png("no misclassified images", path)
    loader = image_loader or _default_loader
    tiles = [_thumbnail(p, loader) for p, _, _, _ in chosen]
    titles = [_wrap(f"true: {t}\npred: {pr} ({_percent(prob)})", 30) for _, t, pr, prob in chosen]
    width = 2.3
    if overlays is not None:
        tiles = [_beside(tile, extra) for tile, extra in zip(tiles, list(overlays) + [None] * len(tiles))]
        width, suffix = 4.2, " (right: where the model looked for the predicted class)"
    return _draw_tiles(
        tiles,
        titles,
        [_WRONG_COLOUR] * len(chosen),
        path,
        ncols=None,
        max_cols=6 if overlays is None else 4,
        tile_in=(width, 2.75),
        fontsize=9.5,
        suptitle=f"Misclassified images ({len(chosen)} of {len(items)}){suffix if overlays is not None else ''}",
    )


def _beside(tile: np.ndarray | None, extra: np.ndarray | None) -> np.ndarray | None:
    """``extra`` scaled to ``tile``'s height and drawn to its right, with a white gap; the tile alone without it."""
    if tile is None or extra is None:
        return tile
    height = tile.shape[0]
    scaled = np.asarray(Image.fromarray(extra).resize((max(1, round(extra.shape[1] * height / extra.shape[0])), height)))
    return np.concatenate([tile, np.full((height, max(4, height // 20), 3), 255, np.uint8), scaled], axis=1)


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
        return message_png("no images to show", path)
    loader = image_loader or _default_loader
    tiles, titles, colours = [], [], []
    for img_path, pred, true, prob in chosen:
        tiles.append(_thumbnail(img_path, loader))
        text, colour = _prediction_title(pred, true, prob)
        titles.append(_wrap(text, 30))
        colours.append(colour)
    return _draw_tiles(tiles, titles, colours, path, ncols=None, max_cols=5, tile_in=(2.3, 2.75), fontsize=9.5)


def _prediction_title(pred: str, true: str | None, prob: float) -> tuple[str, str]:
    """Title and colour of one predicted image: green if right, red with the truth if wrong,
    black if the truth is unknown."""
    text = f"{pred} ({_percent(prob)})"
    if true is None:
        return text, _UNKNOWN_COLOUR
    if true == pred:
        return text, _CORRECT_COLOUR
    return f"pred: {text}\ntrue: {true}", _WRONG_COLOUR


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
        return message_png(title or "no images", path)
    tiles = [_as_uint8_rgb(im) for im in images]
    return _draw_tiles(
        tiles,
        [_wrap(str(t), 30) for t in titles],
        [_UNKNOWN_COLOUR] * len(tiles),
        path,
        ncols=ncols,
        max_cols=8,
        tile_in=(2.2, 2.5),
        fontsize=9.5,
        suptitle=title,
    )


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
    return "\n".join(textwrap.fill(line, width=width, break_long_words=False) or line for line in text.split("\n"))


def _percent(prob: float) -> str:
    """A probability in [0, 1] as a whole percentage, e.g. 0.874 -> '87%'."""
    return f"{float(prob):.0%}"


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
    fig = new_figure(tile_in[0] * cols, tile_in[1] * rows + (0.5 if suptitle else 0.0))
    for i in range(rows * cols):
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.set_axis_off()
        if i >= len(tiles):
            continue
        if tiles[i] is None:
            ax.text(0.5, 0.5, "unreadable\nimage", ha="center", va="center", fontsize=fontsize, color="grey", transform=ax.transAxes)
        else:
            ax.imshow(tiles[i], interpolation="antialiased")
        ax.set_title(titles[i], fontsize=fontsize, color=colours[i], pad=3)
    if suptitle:
        fig.suptitle(suptitle, fontsize=fontsize + 3)
    fig.tight_layout()
    return save_png(fig, path, dpi=GRID_DPI)

"""The audit's PNGs: each suspect photo beside typical photos of its given and its suggested class,
and near-duplicate clusters side by side, one row each, a few rows a page.

Drawn with the reports' grid (``gem_lightning.reports.grids.image_grid_png``); an unreadable photo
becomes a grey tile, never an error.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from gem_lightning.data.images import load_rgb
from gem_lightning.reports.grids import THUMBNAIL_PX, image_grid_png

ROWS_PER_PAGE = 10
"""Rows drawn in one PNG: more would make each photo too small to judge."""
TYPICAL = 3
"""Typical photos shown of each of the two classes beside a suspect."""
MAX_CLUSTER_TILES = 6
"""Members of one cluster drawn in its row (the CSV lists them all)."""


def thumbnail(path: Path) -> np.ndarray:
    """The photo as a small RGB array (upright, transparency on white), or a grey tile if unreadable."""
    try:
        image = load_rgb(path)
    except Exception:  # noqa: BLE001 - one bad file must not sink a whole gallery
        return np.full((64, 64, 3), 160, np.uint8)
    image.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
    return np.asarray(image, dtype=np.uint8)


BLANK = np.full((8, 8, 3), 255, np.uint8)


def paged_grids(rows: Sequence[list[tuple[Path | None, str]]], out_dir: Path, stem: str, title: str) -> list[Path]:
    """Rows of ``(photo or None for a blank, title)`` tiles, ``ROWS_PER_PAGE`` a PNG:
    ``<stem>-01.png``, ``<stem>-02.png``, ...; no PNG when there are no rows."""
    written = []
    columns = max((len(row) for row in rows), default=0)
    for page, start in enumerate(range(0, len(rows), ROWS_PER_PAGE), start=1):
        images, titles = [], []
        for row in rows[start : start + ROWS_PER_PAGE]:
            padded = list(row) + [(None, "")] * (columns - len(row))
            images += [thumbnail(path) if path is not None else BLANK for path, _ in padded]
            titles += [text for _, text in padded]
        last = min(len(rows), start + ROWS_PER_PAGE)
        path = out_dir / f"{stem}-{page:02d}.png"
        written.append(image_grid_png(images, titles, path, ncols=columns, title=f"{title} ({start + 1}-{last} of {len(rows)})"))
    return written


def suspect_row(
    rank: int, photo: Path, given: str, suggested: str, score: float, typical_given: list[Path], typical_suggested: list[Path]
) -> list[tuple[Path | None, str]]:
    """One gallery row: the suspect, then typical photos of the given class, then of the suggested one."""
    row: list[tuple[Path | None, str]] = [(photo, f"#{rank} {photo.name}\ngiven: {given}\n-> {suggested} ({score:.2f})")]
    row += [(path, f"typical {given}") for path in typical_given[:TYPICAL]] + [(None, "")] * (TYPICAL - len(typical_given[:TYPICAL]))
    row += [(path, f"typical {suggested}") for path in typical_suggested[:TYPICAL]]
    return row


def cluster_row(number: int, members: list[tuple[Path, str, str]]) -> list[tuple[Path | None, str]]:
    """One gallery row: the cluster's photos, each titled with its split, class and file name."""
    shown = members[:MAX_CLUSTER_TILES]
    more = f" (+{len(members) - len(shown)} more)" if len(members) > len(shown) else ""
    return [
        (path, f"{'#' + str(number) + ' ' if i == 0 else ''}{split}: {label}\n{path.name}{more if i == len(shown) - 1 else ''}")
        for i, (path, split, label) in enumerate(shown)
    ]

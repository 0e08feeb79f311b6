"""The matplotlib plumbing every report figure shares: a bare figure, PNG saving, a message PNG.

Figures are drawn on a bare :class:`matplotlib.figure.Figure` attached to an Agg canvas, so
reports work on headless machines and never touch ``pyplot``'s global figure registry (no
leaked figures over a long run, no backend to configure).
"""

from __future__ import annotations

from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

#: Resolution of thumbnail grids, curves and message images.
GRID_DPI = 110


def new_figure(width_in: float, height_in: float) -> Figure:
    """A fresh Figure on its own Agg canvas (no pyplot global state)."""
    fig = Figure(figsize=(width_in, height_in))
    FigureCanvasAgg(fig)
    return fig


def save_png(fig: Figure, path: Path, *, dpi: int) -> Path:
    """Write ``fig`` as PNG to ``path`` (creating folders) and return ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, format="png", bbox_inches="tight", pad_inches=0.15)
    return path


def message_png(message: str, path: Path) -> Path:
    """A small PNG that only says ``message``: the honest output for empty inputs.

    Written instead of failing so that a report's link to the figure still works.
    """
    fig = new_figure(4.0, 1.5)
    fig.text(0.5, 0.5, message, ha="center", va="center", fontsize=12)
    return save_png(fig, path, dpi=GRID_DPI)

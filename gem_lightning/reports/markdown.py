"""The Markdown page of an evaluation report: headline metrics, linked files, worst pairs and classes.

One page that opens anywhere (a browser, GitHub, an editor) and links every other report file
by a relative path, so the report folder can be moved or zipped. It formats numbers it is given
and computes none, so it stays consistent with the CSV and the figures.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

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
    Creates the parent folder of ``path`` and returns ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines: list[str] = [f"# {title}", ""]
    lines += _metrics_section(metrics)
    lines += _files_section(files, path.parent)
    lines += _confused_pairs_section(confused_pairs)
    lines += _per_class_section(per_class_rows)
    path.write_text("\n".join(lines).rstrip() + "\n", encoding="utf-8")
    return path


def _metrics_section(metrics: Mapping[str, object]) -> list[str]:
    """Markdown table of the headline metrics, in the given order."""
    lines = ["## Metrics", "", "| metric | value |", "| --- | ---: |"]
    lines += [f"| {_md(name)} | {_fmt(value)} |" for name, value in metrics.items()]
    return lines + [""]


def _files_section(files: Mapping[str, Path], folder: Path) -> list[str]:
    """One section per file, titled by its key: images embedded, other files linked."""
    lines: list[str] = []
    for name, file_path in files.items():
        rel = _relative_link(Path(file_path), folder)
        lines += [f"## {_md(name)}", ""]
        if Path(file_path).suffix.lower() in _IMAGE_SUFFIXES:
            lines.append(f"![{_md(name)}]({rel})")
        else:
            lines.append(f"[{_md(Path(file_path).name)}]({rel})")
        lines.append("")
    return lines


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
        f"| {_md(r['class'])} | {float(r['precision']):.3f} | {float(r['recall']):.3f} | {float(r['f1']):.3f} | {int(r['support'])} |"
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

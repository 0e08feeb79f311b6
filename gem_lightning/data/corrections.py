"""``data.corrections``: a CSV of decisions about single photos (drop it, or give it another class),
applied when the folder is scanned, so the photo folder itself is never touched.

``python main.py audit`` writes such a CSV (every finding with ``action: keep``); a person edits the
``action`` and ``new_label`` columns and trains with ``--data.corrections <csv>``. The same file
works for ``train/`` and ``test/`` photos (dropping leaked test photos, fixing a wrong test label).

Columns (others, such as ``finding`` or ``score``, are for the reader and ignored here):

    path       the file, relative to ``data_dir`` (``train/Ruby/ruby_3.jpg``) or absolute
    action     keep | drop | relabel
    new_label  the class to move it to (``relabel`` only): a class folder name of ``train/``
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from gem_lightning.data.scan import SplitScan
from gem_lightning.errors import UserInputError

COLUMNS = ("path", "finding", "given_label", "suggested_label", "score", "action", "new_label")
"""What ``audit`` writes, in order; ``path`` and ``action`` are required to read it back."""
ACTIONS = ("keep", "drop", "relabel")
SPLITS = ("train", "test")


class CorrectionsError(UserInputError):
    """The corrections file cannot be applied as written."""


@dataclass(frozen=True)
class Corrections:
    """The decisions of one corrections file, by path relative to ``data_dir`` (POSIX form).

    Args:
        source: the CSV they came from (for messages).
        drop: files left out of training and testing.
        relabel: files moved to another class: relative path -> class index.
    """

    source: Path
    drop: frozenset[str] = frozenset()
    relabel: dict[str, int] = field(default_factory=dict)


def read_corrections(csv_path: str | Path, data_dir: Path, class_names: list[str]) -> Corrections:
    """Read and check ``csv_path`` against the dataset folder; every problem is one line.

    Raises:
        CorrectionsError: the file is missing or not a CSV with ``path`` and ``action`` columns; a row
            names a file that is not in ``data_dir``'s ``train/`` or ``test/``, an action other than
            keep, drop or relabel, a class that ``train/`` lacks, or contradicts an earlier row.
    """
    source = Path(csv_path).expanduser()
    rows = _read_rows(source)
    decided: dict[str, tuple[str, int | None, int]] = {}
    for line, row in rows:
        action = (row.get("action") or "keep").strip().lower()
        if action not in ACTIONS:
            raise CorrectionsError(
                f"data.corrections {str(source)!r} line {line}: action {row.get('action')!r} is not one of {', '.join(ACTIONS)}."
            )
        if action == "keep":
            continue
        key = _relative_key(row.get("path") or "", data_dir, source, line)
        label = _new_label(row, class_names, source, line) if action == "relabel" else None
        earlier = decided.get(key)
        if earlier is not None and earlier[:2] != (action, label):
            raise CorrectionsError(
                f"data.corrections {str(source)!r} line {line}: {key!r} is given another action than on line {earlier[2]}; keep one."
            )
        decided[key] = (action, label, line)
    return Corrections(
        source=source,
        drop=frozenset(key for key, (action, _, _) in decided.items() if action == "drop"),
        relabel={key: label for key, (action, label, _) in decided.items() if action == "relabel"},
    )


def _read_rows(source: Path) -> list[tuple[int, dict[str, str]]]:
    """The CSV's rows with their line numbers (the header is line 1)."""
    if not source.is_file():
        raise CorrectionsError(
            f"data.corrections {str(source)!r} does not exist (or is a folder): give the CSV that `main.py audit` wrote and you edited."
        )
    try:
        with source.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            missing = [name for name in ("path", "action") if name not in (reader.fieldnames or [])]
            if missing:
                found = ", ".join(reader.fieldnames or []) or "none"
                raise CorrectionsError(
                    f"data.corrections {str(source)!r} has no column(s) {', '.join(missing)} (found: {found}); "
                    f"expected {', '.join(COLUMNS)}."
                )
            return [(reader.line_num, row) for row in reader]
    except (UnicodeDecodeError, csv.Error) as error:
        raise CorrectionsError(f"data.corrections {str(source)!r} is not a readable UTF-8 CSV ({error}).") from None


def _relative_key(path_text: str, data_dir: Path, source: Path, line: int) -> str:
    """``path_text`` as a POSIX path relative to ``data_dir``, checked to be a file of train/ or test/.

    Paths are compared as written, never through symbolic links: a dataset may be a folder of links.
    """
    if not path_text.strip():
        raise CorrectionsError(f"data.corrections {str(source)!r} line {line}: the path is empty.")
    root = os.path.abspath(data_dir)
    given = path_text.strip()
    absolute = os.path.normpath(given if os.path.isabs(given) else os.path.join(root, given))
    relative = Path(os.path.relpath(absolute, root))
    if relative.parts[:1] == ("..",) or relative.parts[:1] not in ((s,) for s in SPLITS) or len(relative.parts) < 3:
        raise CorrectionsError(
            f"data.corrections {str(source)!r} line {line}: {given!r} is not a photo of {str(data_dir)!r}'s "
            "train/<Class>/ or test/<Class>/."
        )
    if not os.path.isfile(absolute):
        raise CorrectionsError(
            f"data.corrections {str(source)!r} line {line}: {given!r} does not exist in {str(data_dir)!r}; was the photo moved or renamed?"
        )
    return relative.as_posix()


def _new_label(row: dict[str, str], class_names: list[str], source: Path, line: int) -> int:
    name = (row.get("new_label") or "").strip()
    if name not in class_names:
        shown = ", ".join(class_names[:8]) + (", ..." if len(class_names) > 8 else "")
        what = f"new_label {name!r} is not a class of train/" if name else "action relabel needs a new_label"
        raise CorrectionsError(f"data.corrections {str(source)!r} line {line}: {what} (classes: {shown}).")
    return class_names.index(name)


def apply_corrections(scan: SplitScan, corrections: Corrections, data_dir: Path) -> SplitScan:
    """``scan`` with the dropped files left out and the relabelled ones under their new class; what
    was applied is kept on the scan (``dropped``, ``relabelled``) for its summary."""
    root = os.path.abspath(data_dir)
    records, dropped, relabelled = [], [], []
    for record in scan.records:
        key = Path(os.path.relpath(os.path.abspath(record.path), root)).as_posix()
        if key in corrections.drop:
            dropped.append(record.path)
        elif key in corrections.relabel and corrections.relabel[key] != record.label:
            relabelled.append(record.path)
            records.append(replace(record, label=corrections.relabel[key]))
        else:
            records.append(record)
    return replace(scan, records=records, dropped=dropped, relabelled=relabelled)

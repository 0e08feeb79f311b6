"""Split one folder-per-class collection into the ``train/`` and ``test/`` folders training expects.

``python main.py prepare --source photos/ --output data/gems`` (:mod:`gem_lightning.cli.commands.prepare`) turns
``photos/<Class>/*`` into ``data/gems/train/<Class>/*`` and ``data/gems/test/<Class>/*``, as the
original notebook did with ``split-folders``, with three differences:

* the split is per class, seeded, and depends only on the files' contents and the seed (the same on
  every machine), and identical files (same bytes) land together on one side, so the test set
  never scores a copy of a training image;
* files that cannot be used as images (empty, truncated headers, ``.txt``, ``Thumbs.db``, ...) are
  not copied, and the summary lists them with the reason;
* the output is built in a sibling ``<output>.tmp-<pid>`` folder and renamed into place at the
  end, so an interrupted run never leaves a half-written dataset; an existing non-empty output is
  never touched.

Files are copied, hard-linked (``--mode link``: no extra space, same file system only) or
symlinked (``--mode symlink``: absolute links to the source files).
"""

from __future__ import annotations

import errno
import os
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from gem_lightning.data.scan import (
    DatasetLayoutError,
    ImageRecord,
    Rejected,
    SplitScan,
    format_summary,
    is_hidden,
    list_classes,
    relative_path,
    scan_split,
)
from gem_lightning.data.split import stratified_split

__all__ = ["MODES", "PrepareResult", "prepare_dataset"]

Mode = Literal["copy", "link", "symlink"]
MODES: tuple[str, ...] = ("copy", "link", "symlink")
SPLIT_NAMES = frozenset({"train", "test", "val", "valid", "validation"})
NOT_IN_A_CLASS = "not in a class folder"


@dataclass
class PrepareResult:
    """What :func:`prepare_dataset` wrote.

    ``train`` and ``test`` hold the records (source paths) written to each side; ``rejected`` the
    source files that were not copied, with the reason; ``summary`` the readable report.
    """

    source: Path
    output: Path
    classes: list[str]
    train: SplitScan
    test: SplitScan
    rejected: list[Rejected]
    summary: str
    mode: str

    def counts(self) -> dict[str, dict[str, int]]:
        """Images per class name, per split: ``{"train": {"Amber": 36, ...}, "test": {...}}``."""
        return {
            split: {name: scan.counts()[label] for label, name in enumerate(self.classes)}
            for split, scan in (("train", self.train), ("test", self.test))
        }

    def destination(self, split: str, record: ImageRecord) -> Path:
        """Where ``record`` was written under ``output``."""
        return _destination(self.output, split, self.source, record)


def prepare_dataset(
    source: Path,
    output: Path,
    *,
    test_fraction: float = 0.1,
    seed: int = 42,
    mode: Mode = "copy",
) -> PrepareResult:
    """Write ``output/train/<Class>/...`` and ``output/test/<Class>/...`` from ``source/<Class>/...``.

    Args:
        source: folder whose non-hidden subfolders are the classes (files may sit in nested folders;
            their relative paths are kept).
        output: folder to create; it must not exist or be empty.
        test_fraction: share of each class's distinct images held out for ``test/``. Every class with
            at least two distinct images keeps at least one on each side.
        seed: seed of the split.
        mode: ``copy`` the files, hard-``link`` them, or ``symlink`` them.

    Raises:
        DatasetLayoutError: (a ``ValueError``) the source is missing, not a folder, has fewer than two
            classes with usable images, or looks already split; or ``output`` lies inside ``source``.
        ValueError: a bad ``test_fraction`` or ``mode``, or hard links across file systems.
        FileExistsError: ``output`` exists and is not an empty folder.
    """
    source, output = Path(os.path.abspath(Path(source).expanduser())), Path(os.path.abspath(Path(output).expanduser()))
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"--test-fraction must be between 0 and 1 (exclusive), got {test_fraction}.")
    if mode not in MODES:
        raise ValueError(f"--mode must be one of {', '.join(MODES)}, got {mode!r}.")
    classes = _check_source(source)
    _check_output(source, output)

    full = scan_split(source, classes)
    full.rejected += [Rejected(path, NOT_IN_A_CLASS) for path in _loose_files(source)]
    usable = sorted({r.label for r in full.records})
    if len(usable) < 2:
        raise DatasetLayoutError(
            f"{str(source)!r} has {len(usable)} class folder(s) with usable images; a classifier needs at "
            f"least two.\n{format_summary({'source': full})}"
        )
    train_idx, test_idx = stratified_split(full.records, test_fraction, seed)
    train = SplitScan(source, classes, [full.records[i] for i in train_idx])
    test = SplitScan(source, classes, [full.records[i] for i in test_idx])

    _write_atomically(output, lambda root: _populate(root, source, train, test, mode))
    summary = _summary(source, output, full, train, test, test_fraction=test_fraction, seed=seed, mode=mode)
    return PrepareResult(source, output, classes, train, test, full.rejected, summary, mode)


# --------------------------------------------------------------------------- checks


def _check_source(source: Path) -> list[str]:
    if not source.exists():
        raise DatasetLayoutError(f"source {str(source)!r} does not exist.")
    if not source.is_dir():
        raise DatasetLayoutError(f"source {str(source)!r} is a file, not a folder of class folders.")
    classes = list_classes(source)
    if len(classes) < 2:
        raise DatasetLayoutError(
            f"source {str(source)!r} has {len(classes)} class folder(s) ({', '.join(classes) or 'none'}); "
            "a classifier needs at least two. Expected <source>/<Class name>/<image files>."
        )
    if set(classes) <= SPLIT_NAMES:
        raise DatasetLayoutError(
            f"source {str(source)!r} looks already split (its folders are {', '.join(classes)}, not classes). "
            f"Use it directly as data_dir, or pass one of its folders, e.g. --source {source / classes[-1]}."
        )
    return classes


def _check_output(source: Path, output: Path) -> None:
    if output.is_symlink() or (output.exists() and not output.is_dir()):
        raise FileExistsError(f"output {str(output)!r} already exists and is not a folder; choose another path.")
    if output.is_dir() and any(output.iterdir()):
        raise FileExistsError(
            f"output {str(output)!r} already exists and is not empty; nothing was written. Choose a new path, or remove that folder first."
        )
    src, out = source.resolve(), output.resolve()
    if out == src or src in out.parents:
        raise DatasetLayoutError(
            f"output {str(output)!r} lies inside source {str(source)!r}; it would become a class folder. "
            "Choose an output outside the source."
        )


def _loose_files(source: Path) -> list[Path]:
    """Files directly in ``source``, which belong to no class."""
    return sorted(p for p in source.iterdir() if p.is_file() and not is_hidden(p))


# --------------------------------------------------------------------------- writing


def _destination(root: Path, split: str, source: Path, record: ImageRecord) -> Path:
    return root / split / record.path.relative_to(source)


def _populate(root: Path, source: Path, train: SplitScan, test: SplitScan, mode: Mode) -> None:
    for split, scan in (("train", train), ("test", test)):
        (root / split).mkdir(parents=True)
        for record in scan.records:
            target = _destination(root, split, source, record)
            target.parent.mkdir(parents=True, exist_ok=True)
            _place(record.path, target, mode)


def _place(path: Path, target: Path, mode: Mode) -> None:
    if mode == "copy":
        shutil.copy2(path, target)
    elif mode == "symlink":
        target.symlink_to(path.resolve())
    else:
        try:
            os.link(path, target)
        except OSError as error:
            if error.errno in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
                raise ValueError(
                    f"cannot hard-link {str(path)!r} into {str(target.parent)!r} ({error.strerror}); hard links need "
                    "source and output on the same file system. Use --mode copy or --mode symlink."
                ) from error
            raise


def _write_atomically(output: Path, build) -> None:
    """Run ``build(tmp)`` on a sibling temp folder, then rename it to ``output``; clean up on failure."""
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f"{output.name}.tmp-{os.getpid()}")
    if tmp.exists():  # left by an earlier, killed run that had our pid
        shutil.rmtree(tmp)
    try:
        build(tmp)
        try:
            os.replace(tmp, output)  # an empty existing folder is replaced; a non-empty one is not
        except OSError as error:
            if error.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
                raise FileExistsError(f"output {str(output)!r} appeared while preparing and is not empty; nothing was written.") from error
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# --------------------------------------------------------------------------- report


def _summary(source: Path, output: Path, full: SplitScan, train: SplitScan, test: SplitScan, *, test_fraction, seed, mode) -> str:
    verb = {"copy": "Copied", "link": "Hard-linked", "symlink": "Symlinked"}[mode]
    head = (
        f"{verb} {len(full.records)} images of {len(full.classes)} classes from {str(source)!r} into "
        f"{str(output)!r}: {len(train.records)} train, {len(test.records)} test "
        f"(test fraction {test_fraction}, seed {seed})."
    )
    lines = [head, "", format_summary({"train": train, "test": test})]
    counts: Counter[int] = full.counts()
    empty = [name for label, name in enumerate(full.classes) if counts[label] == 0]
    if empty:
        lines.append(f"\nClass folders without usable images (left out of the output): {', '.join(empty)}")
    test_counts = test.counts()
    no_test = [name for label, name in enumerate(full.classes) if counts[label] and not test_counts[label]]
    if no_test:
        lines.append(f"\nClasses with a single distinct image (kept in train/, none in test/): {', '.join(no_test)}")
    if full.rejected:
        lines.append(f"\nsource: {len(full.rejected)} file(s) not copied:")
        for item in full.rejected:
            lines.append(f"  {relative_path(item.path, source)}: {item.reason}")
    return "\n".join(lines)

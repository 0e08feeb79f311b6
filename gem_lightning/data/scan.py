"""Find the images of a folder-per-class dataset and say, in one summary, what will not be used.

Checking a layout and probing files here is cheap (headers only); a full decode happens once, in
the decoded-image cache, which adds any truncated or corrupt file to the same report.
"""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from gem_lightning.data.images import BadImageError, probe_image
from gem_lightning.errors import UserInputError

EXPECTED_LAYOUT = (
    "Expected a folder-per-class layout:\n"
    "  <data_dir>/train/<Class name>/<image files>\n"
    "  <data_dir>/test/<Class name>/<image files>   (optional)"
)


class DatasetLayoutError(UserInputError):
    """The dataset folder does not have the layout the data module needs."""


@dataclass(frozen=True)
class ImageRecord:
    """One usable image: its path, its class index and the digest of its bytes; with several labels
    (a labels file), ``labels`` holds them all and ``label`` the first."""

    path: Path
    label: int
    digest: str
    labels: tuple[int, ...] = ()

    @property
    def label_set(self) -> tuple[int, ...]:
        """Every label of the image: ``labels``, or the one ``label``."""
        return self.labels or (self.label,)


@dataclass(frozen=True)
class Rejected:
    """A file that will not be used, and why."""

    path: Path
    reason: str


@dataclass
class SplitScan:
    """The result of scanning one split folder (``train/`` or ``test/``)."""

    root: Path
    classes: list[str]
    records: list[ImageRecord] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    dropped: list[Path] = field(default_factory=list)
    """Usable files left out by ``data.corrections`` (``gem_lightning.data.corrections``)."""
    relabelled: list[Path] = field(default_factory=list)
    """Files that ``data.corrections`` moved to another class (their records carry the new label)."""

    def counts(self) -> Counter[int]:
        """Images per class (an image with several labels counts for each)."""
        return Counter(label for record in self.records for label in record.label_set)


def is_hidden(path: Path | str) -> bool:
    return Path(path).name.startswith(".")


def list_classes(split_dir: Path) -> list[str]:
    """Class names of a split folder: its non-hidden subfolders, sorted (the label order)."""
    return sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not is_hidden(p))


def check_dataset_dir(data_dir: Path) -> list[str]:
    """Validate ``data_dir``'s layout and return the class names of ``train/``, in label order.

    Raises:
        DatasetLayoutError: naming the path and the layout expected, when ``data_dir`` is missing,
            is a file or a dangling link, has no ``train/`` folder, ``train/`` holds dangling links
            or fewer than two classes, or ``test/`` has classes that ``train/`` lacks.
    """
    if is_dangling_link(data_dir):
        raise DatasetLayoutError(f"data_dir {str(data_dir)!r} is a symbolic link that loops or points nowhere. {EXPECTED_LAYOUT}")
    if not data_dir.exists():
        raise DatasetLayoutError(f"data_dir {str(data_dir)!r} does not exist. {EXPECTED_LAYOUT}")
    if not data_dir.is_dir():
        raise DatasetLayoutError(f"data_dir {str(data_dir)!r} is a file, not a folder. {EXPECTED_LAYOUT}")
    train_dir = data_dir / "train"
    if train_dir.exists() and not train_dir.is_dir():
        raise DatasetLayoutError(f"{str(train_dir)!r} is a file, not a folder of class folders. {EXPECTED_LAYOUT}")
    if not train_dir.is_dir():
        found = ", ".join(sorted(p.name for p in data_dir.iterdir() if not is_hidden(p))) or "nothing"
        raise DatasetLayoutError(
            f"{str(data_dir)!r} has no 'train/' folder (found: {found}). {EXPECTED_LAYOUT}\n"
            "To split a single folder-per-class collection into train/ and test/, run "
            "`python main.py prepare --source <folder> --output <data_dir>`."
        )
    loops = sorted(p.name for p in train_dir.iterdir() if is_dangling_link(p) and not is_hidden(p))
    if loops:
        raise DatasetLayoutError(
            f"{str(train_dir)!r} has symbolic links that loop or point nowhere where class folders belong: "
            f"{', '.join(loops)}. Remove them, or point them at folders of images."
        )
    classes = list_classes(train_dir)
    if len(classes) < 2:
        raise DatasetLayoutError(
            f"{str(train_dir)!r} has {len(classes)} class folder(s) ({', '.join(classes) or 'none'}); "
            f"a classifier needs at least two. {EXPECTED_LAYOUT}"
        )
    test_dir = data_dir / "test"
    if test_dir.is_dir():
        unknown = sorted(set(list_classes(test_dir)) - set(classes))
        if unknown:
            raise DatasetLayoutError(
                f"{str(test_dir)!r} has classes that {str(train_dir)!r} lacks: {', '.join(unknown)}. "
                "Every test class needs training images; rename or remove those folders."
            )
    return classes


def is_dangling_link(path: Path) -> bool:
    """A symbolic link that cannot be followed: it loops, or its target is gone."""
    try:
        path.stat()
    except OSError:
        return path.is_symlink()
    return False


def unfollowed_links(folder: Path) -> list[Rejected]:
    """Links under ``folder`` that the scan does not follow: dangling or looping ones, and links to
    folders (never followed, so that a link to a parent cannot loop the scan)."""
    links = []
    for path in sorted(folder.rglob("*"), key=lambda p: p.relative_to(folder).as_posix()):
        if not path.is_symlink() or any(is_hidden(x) for x in path.relative_to(folder).parts):
            continue
        if is_dangling_link(path):
            links.append(Rejected(path, "symbolic link that loops or points nowhere"))
        elif path.is_dir():
            links.append(Rejected(path, "symbolic link to a folder (not followed)"))
    return links


def file_digest(path: Path) -> str:
    """A digest of the file's bytes: names duplicates and keys the decoded-image cache."""
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha1").hexdigest()


def iter_files(folder: Path) -> list[Path]:
    """Every non-hidden file under ``folder``, recursively, in a machine-independent order."""
    files = [p for p in folder.rglob("*") if p.is_file() and not any(is_hidden(x) for x in p.relative_to(folder).parts)]
    return sorted(files, key=lambda p: p.relative_to(folder).as_posix())


def probe_file(path: Path) -> str | None:
    """The reason ``path`` cannot be used as an image, from its header alone, or None."""
    try:
        probe_image(path)
    except BadImageError as error:
        return error.reason
    return None


def scan_split(split_dir: Path, classes: list[str]) -> SplitScan:
    """Probe every file of ``split_dir/<class>/`` and sort them into usable records and rejects."""
    scan = SplitScan(root=split_dir, classes=classes)
    for label, name in enumerate(classes):
        class_dir = split_dir / name
        if not class_dir.is_dir():
            continue
        for path in iter_files(class_dir):
            reason = probe_file(path)
            if reason is None:
                scan.records.append(ImageRecord(path, label, file_digest(path)))
            else:
                scan.rejected.append(Rejected(path, reason))
        scan.rejected += unfollowed_links(class_dir)
    return scan


def duplicate_groups(records: list[ImageRecord]) -> list[list[ImageRecord]]:
    """Groups of records with identical bytes (two or more files each)."""
    by_digest: dict[str, list[ImageRecord]] = defaultdict(list)
    for record in records:
        by_digest[record.digest].append(record)
    return [group for group in by_digest.values() if len(group) > 1]


def label_conflicts(records: list[ImageRecord]) -> list[list[ImageRecord]]:
    """Duplicate groups whose copies sit under different classes: the labels disagree."""
    return [group for group in duplicate_groups(records) if len({r.label_set for r in group}) > 1]


def format_summary(scans: dict[str, SplitScan], *, min_per_class: int = 2, max_listed: int = 50) -> str:
    """One readable report: images per class and split, thin classes, duplicates and rejects."""
    splits = list(scans)
    classes = next(iter(scans.values())).classes
    counts = {split: scans[split].counts() for split in splits}
    width = max(len(name) for name in classes)
    lines = [f"{'class':<{width}}  " + "  ".join(f"{s:>6}" for s in splits)]
    for label, name in enumerate(classes):
        lines.append(f"{name:<{width}}  " + "  ".join(f"{counts[s][label]:>6}" for s in splits))
    lines.append(f"{'total':<{width}}  " + "  ".join(f"{len(scans[s].records):>6}" for s in splits))

    train = scans.get("train")
    if train is not None:
        thin = [name for label, name in enumerate(classes) if counts["train"][label] < min_per_class]
        if thin:
            lines.append(
                f"\nClasses with fewer than {min_per_class} usable training images (too few to split "
                f"into train and validation): {', '.join(thin)}"
            )
    for split in splits:
        records = scans[split].records
        duplicates = duplicate_groups(records)
        conflicts = label_conflicts(records)
        if duplicates:
            lines.append(
                f"\n{split}: {len(duplicates)} groups of identical files (kept together on one side of "
                f"the train/validation split), {len(conflicts)} of them under different classes:"
            )
            for group in (conflicts + [g for g in duplicates if g not in conflicts])[:max_listed]:
                kind = "LABEL CONFLICT" if group in conflicts else "duplicate"
                lines.append(f"  {kind}: " + " == ".join(relative_path(r.path, scans[split].root) for r in group))
        if scans[split].dropped or scans[split].relabelled:
            lines.append(
                f"\n{split}: data.corrections applied: {len(scans[split].dropped)} file(s) dropped, "
                f"{len(scans[split].relabelled)} relabelled (the photo folder is unchanged)."
            )
        rejected = scans[split].rejected
        if rejected:
            lines.append(f"\n{split}: {len(rejected)} file(s) not used:")
            for item in rejected[:max_listed]:
                lines.append(f"  {relative_path(item.path, scans[split].root)}: {item.reason}")
            if len(rejected) > max_listed:
                lines.append(f"  ... and {len(rejected) - max_listed} more")
    return "\n".join(lines)


def relative_path(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` for reports, or the whole path when it lies elsewhere."""
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)

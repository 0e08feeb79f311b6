"""What the audit leaves for a person: ``audit.md`` (counts, where to look, what to do next), the
galleries, ``corrections.csv`` (every finding, ``action: keep``, to edit and feed back with
``--data.corrections``), ``near_duplicates.csv`` (every cluster member) and
``drop_leaked_test.csv`` (a ready corrections file that drops every test photo with a
near-duplicate in ``train/``: test accuracy without the leak)."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

from gem_lightning.audit.galleries import cluster_row, paged_grids, suspect_row
from gem_lightning.audit.run import AuditResult
from gem_lightning.data.corrections import COLUMNS

FINDINGS = {
    "label_issue": "label issue: the photo looks like another class (out-of-fold, cleanlab)",
    "duplicate_across_classes": "near-duplicate of a photo under another class (one label is wrong)",
    "leaked_test": "test photo with a near-duplicate in train/ (leakage: drop it to measure test accuracy honestly)",
}


def relative(path: Path, data_dir: Path) -> str:
    """``path`` as ``corrections.csv`` writes it: relative to the dataset folder, POSIX separators."""
    return Path(os.path.relpath(os.path.abspath(path), os.path.abspath(data_dir))).as_posix()


def finding_rows(result: AuditResult) -> list[dict[str, str]]:
    """One row per (photo, finding), in ``data.corrections`` columns, each with ``action: keep``."""
    names, rows = result.class_names, []
    for suspect in result.suspects:
        rows.append(_row(result, suspect.index, "label_issue", names[suspect.suggested], f"{suspect.score:.4f}"))
    for cluster in result.clusters:
        if cluster.across_classes:
            for i in cluster.members:
                others = sorted({names[result.records[j].label] for j in cluster.members} - {names[result.records[i].label]})
                rows.append(_row(result, i, "duplicate_across_classes", " | ".join(others), ""))
    for i in result.leaked_test():
        rows.append(_row(result, i, "leaked_test", "", ""))
    return rows


def _row(result: AuditResult, index: int, finding: str, suggested: str, score: str) -> dict[str, str]:
    record = result.records[index]
    return {
        "path": relative(record.path, result.data_dir),
        "finding": finding,
        "given_label": result.class_names[record.label],
        "suggested_label": suggested,
        "score": score,
        "action": "keep",
        "new_label": "",
    }


def write_csv(rows: list[dict[str, str]], path: Path, columns: tuple[str, ...] = COLUMNS) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns))
        writer.writeheader()
        writer.writerows(rows)
    return path


def cluster_rows(result: AuditResult) -> list[dict[str, str]]:
    """Every member of every near-duplicate cluster, with the cluster's flags."""
    return [
        {
            "cluster": str(number),
            "path": relative(result.records[i].path, result.data_dir),
            "split": result.splits[i],
            "label": result.class_names[result.records[i].label],
            "across_classes": str(c.across_classes).lower(),
            "across_splits": str(c.across_splits).lower(),
        }
        for number, c in enumerate(result.clusters, start=1)
        for i in c.members
    ]


def typical_photos(result: AuditResult, label: int, exclude: set[int]) -> list[Path]:
    """Training photos of ``label`` the out-of-fold model is surest of: what that class looks like."""
    candidates = [i for i in range(result.train_count) if result.records[i].label == label and i not in exclude]
    candidates.sort(key=lambda i: -result.probabilities[i, label])
    return [result.records[i].path for i in candidates[:3]]


def write_galleries(result: AuditResult, out_dir: Path) -> dict[str, list[Path]]:
    """The PNGs of each finding kind (at most ``options.max_gallery`` rows each)."""
    names, limit = result.class_names, result.options.max_gallery
    flagged = {s.index for s in result.suspects}
    suspects = [
        suspect_row(
            rank,
            result.records[s.index].path,
            names[s.given],
            names[s.suggested],
            s.score,
            typical_photos(result, s.given, flagged),
            typical_photos(result, s.suggested, flagged),
        )
        for rank, s in enumerate(result.suspects[:limit], start=1)
    ]
    galleries = {"label_issues": paged_grids(suspects, out_dir, "label_issues", "Label issues: given -> suggested (label quality)")}
    for kind, wanted, title in (
        ("duplicates_across_classes", "across_classes", "Near-duplicates under different classes"),
        ("leaked_test", "across_splits", "Near-duplicates across train/ and test/"),
    ):
        chosen = [(n, c) for n, c in enumerate(result.clusters, start=1) if getattr(c, wanted)][:limit]
        rows = [
            cluster_row(n, [(result.records[i].path, result.splits[i], names[result.records[i].label]) for i in c.members])
            for n, c in chosen
        ]
        galleries[kind] = paged_grids(rows, out_dir, kind, title)
    return galleries


def write_outputs(result: AuditResult, out_dir: Path) -> dict[str, Path]:
    """Every file of the audit into ``out_dir``; returns them by name (``audit.md`` last)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {
        "corrections": write_csv(finding_rows(result), out_dir / "corrections.csv"),
        "near_duplicates": write_csv(
            cluster_rows(result), out_dir / "near_duplicates.csv", ("cluster", "path", "split", "label", "across_classes", "across_splits")
        ),
    }
    leaked = [dict(_row(result, i, "leaked_test", "", ""), action="drop") for i in result.leaked_test()]
    files["drop_leaked_test"] = write_csv(leaked, out_dir / "drop_leaked_test.csv")
    galleries = write_galleries(result, out_dir)
    files["audit"] = write_markdown(result, out_dir / "audit.md", galleries)
    return files


def write_markdown(result: AuditResult, path: Path, galleries: dict[str, list[Path]]) -> Path:
    """``audit.md``: the counts, the settings, the time, where the pictures are and how to act."""
    names = result.class_names
    across_classes = [c for c in result.clusters if c.across_classes]
    across_splits = [c for c in result.clusters if c.across_splits]
    options = result.options
    lines = [
        f"# Data audit: {result.data_dir}",
        "",
        f"{result.train_count} training and {len(result.records) - result.train_count} test photos, {len(names)} classes "
        f"({len(result.rejected)} could not be decoded).",
        "",
        "| finding | count | gallery |",
        "|---|---|---|",
        f"| label issues (cleanlab, {options.folds}-fold out-of-fold probabilities) | {len(result.suspects)} "
        f"| {_links(galleries['label_issues'])} |",
        f"| near-duplicate clusters | {len(result.clusters)} ({sum(len(c.members) for c in result.clusters)} photos) | |",
        f"| ... spanning classes (label conflicts) | {len(across_classes)} | {_links(galleries['duplicates_across_classes'])} |",
        f"| ... spanning train/ and test/ (leakage) | {len(across_splits)} ({len(result.leaked_test())} test photos) "
        f"| {_links(galleries['leaked_test'])} |",
        "",
        f"Out-of-fold accuracy of the linear head on frozen features: {_oof_accuracy(result):.1%}.",
        f"Near-duplicates: pHash distance <= {options.duplicates.max_hash_distance} bits with feature cosine >= "
        f"{options.duplicates.hash_min_similarity}, or feature cosine >= {options.duplicates.min_similarity}.",
        "Time: " + ", ".join(f"{step} {seconds:.0f} s" for step, seconds in result.seconds.items()) + ".",
        "",
        "## Top suspects",
        "",
        "| # | photo | given | suggested | label quality |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {rank} | {relative(result.records[s.index].path, result.data_dir)} | {names[s.given]} | {names[s.suggested]} | {s.score:.3f} |"
        for rank, s in enumerate(result.suspects[:20], start=1)
    ]
    lines += [
        "",
        "## What to do",
        "",
        "1. Look at the galleries. In `corrections.csv` set `action` to `drop` (leave the photo out) or `relabel` "
        "(and `new_label` to a class folder name) where you agree; `keep` changes nothing.",
        "2. Train with `--data.corrections <that csv>`: the scan applies it without touching the photo folder and "
        "says how many photos it dropped and relabelled.",
        "3. `drop_leaked_test.csv` drops every leaked test photo: `test` with and without it shows how much the leak "
        "inflated test accuracy.",
        "",
    ]
    lines += [f"Findings: {', '.join(f'`{k}`: {v}' for k, v in FINDINGS.items())}.", ""]
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def _oof_accuracy(result: AuditResult) -> float:
    labels = np.array([r.label for r in result.records[: result.train_count]])
    return float((result.probabilities.argmax(1) == labels).mean()) if len(labels) else 0.0


def _links(paths: list[Path]) -> str:
    return ", ".join(f"[{p.name}]({p.name})" for p in paths) or "none"

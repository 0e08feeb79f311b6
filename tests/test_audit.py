"""``main.py audit`` and ``data.corrections`` on small generated folders: planted mislabels are among the
top suspects, planted near-duplicates across classes and across train/test are clustered and flagged,
the corrections CSV applies (and is counted by the scan), and bad input ends in one line."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from gem_lightning.audit.duplicates import DuplicateSettings, near_duplicate_pairs, union_find_clusters
from gem_lightning.audit.outputs import write_outputs
from gem_lightning.audit.run import AuditOptions, AuditResult, run_audit
from gem_lightning.cli.app import cli_main
from gem_lightning.data.cache import Cache
from gem_lightning.data.corrections import CorrectionsError, read_corrections
from gem_lightning.data.datamodule import GemDataModule
from gem_lightning.data.loader import Loader
from gem_lightning.data.scan import format_summary
from gem_lightning.errors import UserInputError

CLASSES = {"Blue": (30, 60, 220), "Green": (30, 200, 60), "Red": (220, 30, 40)}
TRAIN, TEST = 18, 4
MISLABELLED = {
    "train/Blue/red as blue 0.jpg": "Red",
    "train/Blue/red as blue 1.jpg": "Red",
    "train/Red/blue as red 0.jpg": "Blue",
    "train/Red/blue as red 1.jpg": "Blue",
}
"""Planted mislabels (a photo of the class on the right under another class) -> their true class."""
CROSS_CLASS_COPY = ("train/Red/red 3.jpg", "train/Green/copy of red 3.jpg")
LEAKED = ("train/Blue/blue 5.jpg", "test/Blue/copy of blue 5.jpg")
OPTIONS = AuditOptions(folds=3, image_size=64, max_gallery=3)


def scene(colour: tuple[int, int, int], seed: int, size: int = 96, blob: tuple[int, int] = (45, 60)) -> Image.Image:
    """A photo-like picture: a coloured blob (the class; its side drawn from ``blob``) among random grey
    squares on a noisy background."""
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(150, 250, 3)))
    draw = ImageDraw.Draw(image)
    for _ in range(4):
        x, y = rng.integers(0, size, 2)
        side = int(rng.integers(4, 14))
        draw.rectangle([int(x), int(y), int(x) + side, int(y) + side], fill=(int(rng.integers(0, 120)),) * 3)
    x, y = rng.integers(5, size - 65, 2)
    w, h = rng.integers(*blob, 2)
    draw.ellipse(
        [int(x), int(y), int(x + w), int(y + h)], fill=tuple(int(v) for v in np.clip(np.array(colour) + rng.integers(-25, 25, 3), 0, 255))
    )
    pixels = np.asarray(image).astype(float) + rng.normal(0, 12, (size, size, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def make_audit_set(root: Path, train: int = TRAIN, test: int = TEST, classes: dict = CLASSES) -> Path:
    """``root/train|test/<Class>/`` scenes, plus the planted problems when all three classes are there."""
    for split, count in (("train", train), ("test", test)):
        for c, (name, colour) in enumerate(classes.items()):
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(count):
                scene(colour, seed=c * 1000 + i + (500 if split == "test" else 0)).save(
                    root / split / name / f"{name.lower()} {i}.jpg", quality=90
                )
    if set(classes) == set(CLASSES):
        for i, (path, true_class) in enumerate(MISLABELLED.items()):
            scene(CLASSES[true_class], seed=9000 + i).save(root / path, quality=90)
        original = Image.open(root / CROSS_CLASS_COPY[0])
        original.resize((80, 80)).save(root / CROSS_CLASS_COPY[1], quality=85)  # resized copy under another class
        buffer = io.BytesIO()
        Image.open(root / LEAKED[0]).save(buffer, format="JPEG", quality=50)  # re-encoded copy in test/
        (root / LEAKED[1]).write_bytes(buffer.getvalue())
    return root


def datamodule(data_dir: Path, **overrides) -> GemDataModule:
    return GemDataModule(
        str(data_dir), **{"image_size": 32, "loader": Loader(num_workers=0), "cache": Cache(dir=None), "val_fraction": 0.2, **overrides}
    )


@pytest.fixture(scope="module")
def audited(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, AuditResult, dict[str, Path]]:
    """One audit of the planted set, shared by the tests that read its findings."""
    root = make_audit_set(tmp_path_factory.mktemp("audit") / "gems")
    result = run_audit(datamodule(root).source.folders, OPTIONS)
    return root, result, write_outputs(result, root.parent / "audit")


def relative(result: AuditResult, index: int) -> str:
    return result.records[index].path.relative_to(result.data_dir).as_posix()


def test_planted_mislabels_are_among_the_top_suspects(audited):
    _, result, _ = audited
    top = {relative(result, s.index): result.class_names[s.suggested] for s in result.suspects[:6]}
    assert {path: top.get(path) for path in MISLABELLED} == MISLABELLED
    assert all(0 <= s.score <= 1 for s in result.suspects)


def test_planted_near_duplicates_are_clustered_and_flagged(audited):
    _, result, _ = audited
    flagged = [{relative(result, i) for i in c.members} for c in result.clusters if c.across_classes or c.across_splits]
    assert set(CROSS_CLASS_COPY) in flagged
    assert set(LEAKED) in flagged
    assert [relative(result, i) for i in result.leaked_test()] == [LEAKED[1]]
    assert len(flagged) == 2  # the distinct scenes are not near-duplicates of each other


def test_outputs_a_person_acts_on(audited):
    root, result, files = audited
    out = files["audit"].parent
    assert sorted(p.name for p in out.glob("*.png")) == ["duplicates_across_classes-01.png", "label_issues-01.png", "leaked_test-01.png"]
    text = files["audit"].read_text()
    assert f"| {len(result.suspects)} |" in text and "(1 test photos)" in text
    rows = list(csv.DictReader(files["corrections"].open()))
    assert {r["finding"] for r in rows} == {"label_issue", "duplicate_across_classes", "leaked_test"}
    assert all(r["action"] == "keep" and (root / r["path"]).is_file() for r in rows)
    assert [r["path"] for r in csv.DictReader(files["drop_leaked_test"].open())] == [LEAKED[1]]


def test_edited_corrections_csv_drops_and_relabels_without_touching_the_folder(audited, tmp_path):
    root, _, files = audited
    rows = list(csv.DictReader(files["corrections"].open()))
    for row in rows:
        if row["finding"] == "label_issue" and row["path"] in MISLABELLED:
            row.update(action="relabel", new_label=MISLABELLED[row["path"]])
        if row["finding"] == "leaked_test":
            row.update(action="drop")
    edited = tmp_path / "corrections.csv"
    with edited.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    before = sorted(p.relative_to(root) for p in root.rglob("*.jpg"))
    data = datamodule(root, corrections=str(edited))
    data.setup("fit")
    data.setup("test")
    scans = data.source.folders.scans
    assert (len(scans["train"].dropped), len(scans["train"].relabelled)) == (0, 4)
    assert (len(scans["test"].dropped), len(scans["test"].relabelled)) == (1, 0)
    assert "data.corrections applied: 0 file(s) dropped, 4 relabelled" in format_summary({"train": scans["train"]})
    assert "data.corrections applied: 1 file(s) dropped, 0 relabelled" in format_summary({"test": scans["test"]})
    labels = {r.path.relative_to(root).as_posix(): r.label for r in data.source.records["train"] + data.source.records["val"]}
    assert {p: data.class_names[labels[p]] for p in MISLABELLED} == MISLABELLED
    assert len(data.source.records["test"]) == 3 * TEST  # the leaked copy is left out
    assert sorted(p.relative_to(root) for p in root.rglob("*.jpg")) == before


def write_corrections(path: Path, *rows: tuple[str, str, str]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "finding", "action", "new_label"])
        writer.writerows([(p, "label_issue", action, label) for p, action, label in rows])
    return path


@pytest.mark.parametrize(
    "rows, expected",
    [
        ((("train/Blue/no such photo.jpg", "drop", ""),), "does not exist in"),
        ((("train/Blue/blue 0.jpg", "delete", ""),), "action 'delete' is not one of keep, drop, relabel"),
        ((("train/Blue/blue 0.jpg", "relabel", "Purple"),), "new_label 'Purple' is not a class of train/"),
        ((("train/Blue/blue 0.jpg", "relabel", ""),), "action relabel needs a new_label"),
        ((("train/Blue/blue 0.jpg", "drop", ""), ("train/Blue/blue 0.jpg", "relabel", "Red")), "another action than on line 2"),
        ((("../elsewhere.jpg", "drop", ""),), "is not a photo of"),
    ],
)
def test_bad_corrections_are_refused_in_one_line(tmp_path, rows, expected):
    root = make_audit_set(tmp_path / "gems", train=2, test=1, classes={"Blue": (0, 0, 255), "Red": (255, 0, 0)})
    csv_path = write_corrections(tmp_path / "c.csv", *rows)
    with pytest.raises(CorrectionsError, match=expected) as error:
        read_corrections(csv_path, root, ["Blue", "Red"])
    assert "\n" not in str(error.value)


def test_a_missing_or_malformed_corrections_file_is_refused_in_one_line(tmp_path):
    root = make_audit_set(tmp_path / "gems", train=2, test=1, classes={"Blue": (0, 0, 255), "Red": (255, 0, 0)})
    (tmp_path / "bad.csv").write_text("file,decision\nx,y\n")
    for path, expected in ((tmp_path / "absent.csv", "does not exist"), (tmp_path / "bad.csv", "has no column")):
        with pytest.raises(UserInputError, match=expected) as error:
            datamodule(root, corrections=str(path)).setup("fit")
        assert "\n" not in str(error.value)


def run_command(args: list[str], capsys) -> tuple[int, str, str]:
    try:
        status = cli_main(args)
    except SystemExit as stop:
        status = stop.code
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_audit_command_end_to_end_and_its_bad_input(tmp_path, capsys):
    small = make_audit_set(tmp_path / "small", train=4, test=1, classes={"Blue": (0, 0, 255), "Red": (255, 0, 0)})
    common = ["--data.loader.num_workers", "0", "--trainer.logger.init_args.save_dir", str(tmp_path / "runs")]
    status, out, _ = run_command(["audit", "--data.data_dir", str(small), "--folds", "2", "--image_size", "32", *common], capsys)
    assert status == 0 and "label issue(s)" in out
    assert (next((tmp_path / "runs").rglob("audit.md"))).is_file()  # default output: under the run folder

    status, _, err = run_command(["audit", "--data.data_dir", str(small), "--folds", "5", *common], capsys)
    assert status == 2 and err.strip().splitlines()[-1].startswith("error: --folds 5 is larger than the smallest class of train/")

    one_class = tmp_path / "one"
    (one_class / "train" / "Only").mkdir(parents=True)
    scene((0, 0, 255), 0).save(one_class / "train" / "Only" / "a.jpg")
    status, _, err = run_command(["audit", "--data.data_dir", str(one_class), *common], capsys)
    error_line = next(line for line in err.splitlines() if line.startswith("error: "))
    assert status == 2 and "has 1 class folder(s) (Only); a classifier needs at least two" in error_line  # then the layout expected


def test_union_find_joins_chains_and_keeps_singletons_out():
    assert union_find_clusters(6, [(0, 1), (4, 5), (1, 2)]) == [[0, 1, 2], [4, 5]]
    hashes = np.array([0, 0b111, 2**64 - 1], dtype=np.uint64)
    features = np.eye(3, dtype=np.float32)
    settings = DuplicateSettings(max_hash_distance=3, hash_min_similarity=-1.0, min_similarity=2.0)
    assert near_duplicate_pairs(hashes, features, settings) == [(0, 1)]

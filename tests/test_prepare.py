"""``prepare``: one folder-per-class collection split into train/ and test/."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from conftest import write_image

from gem_lightning.cli.commands.prepare import main
from gem_lightning.data.scan import DatasetLayoutError, check_dataset_dir, file_digest, iter_files
from gem_lightning.data.tools.prepare import prepare_dataset

CLASSES = {"Amber": ((230, 150, 30), 20), "Jade": ((40, 160, 80), 10), "Ruby": ((200, 20, 40), 7)}


def make_source(root: Path, classes=CLASSES) -> Path:
    for c, (name, (colour, count)) in enumerate(classes.items()):
        for i in range(count):
            write_image(root / name / f"{name.lower()}_{i}.jpg", colour, seed=1000 * c + i)
    return root


def relative_files(folder: Path) -> list[str]:
    return [p.relative_to(folder).as_posix() for p in iter_files(folder)] if folder.exists() else []


@pytest.fixture
def source(tmp_path: Path) -> Path:
    return make_source(tmp_path / "photos")


def test_counts_per_class_and_split(source, tmp_path):
    out = tmp_path / "gems"
    result = prepare_dataset(source, out, test_fraction=0.2, seed=3)
    assert result.counts() == {
        "train": {"Amber": 16, "Jade": 8, "Ruby": 6},
        "test": {"Amber": 4, "Jade": 2, "Ruby": 1},
    }
    for split in ("train", "test"):
        for name, count in result.counts()[split].items():
            assert len(relative_files(out / split / name)) == count
    # every source file lands on exactly one side, under its own class, with its bytes intact
    written = {p.relative_to(out / split).as_posix(): p for split in ("train", "test") for p in iter_files(out / split)}
    assert sorted(written) == relative_files(source)
    assert all(file_digest(p) == file_digest(source / rel) for rel, p in written.items())
    # the output is a valid data_dir for training, and nothing temporary is left behind
    assert check_dataset_dir(out) == sorted(CLASSES)
    assert not list(tmp_path.glob("gems.tmp-*"))
    assert "Amber" in result.summary and "train" in result.summary and "test" in result.summary


def test_split_is_deterministic_per_seed(source, tmp_path):
    first = prepare_dataset(source, tmp_path / "a", seed=7, test_fraction=0.3)
    again = prepare_dataset(source, tmp_path / "b", seed=7, test_fraction=0.3)
    other = prepare_dataset(source, tmp_path / "c", seed=8, test_fraction=0.3)
    assert relative_files(tmp_path / "a" / "test") == relative_files(tmp_path / "b" / "test")
    assert relative_files(tmp_path / "a" / "test") != relative_files(tmp_path / "c" / "test")
    assert first.counts() == again.counts() == other.counts()  # the counts depend on the fraction only


def test_identical_files_stay_on_one_side(tmp_path):
    source = make_source(tmp_path / "photos")
    original = source / "Amber" / "amber_0.jpg"
    for i in range(4):  # five identical Amber photos under different names
        shutil.copy(original, source / "Amber" / f"copy_{i}.jpg")
    for seed in range(6):
        out = tmp_path / f"out{seed}"
        result = prepare_dataset(source, out, test_fraction=0.5, seed=seed)
        sides = {
            split
            for split in ("train", "test")
            for p in iter_files(out / split / "Amber")
            if p.name in {"amber_0.jpg", "copy_0.jpg", "copy_1.jpg", "copy_2.jpg", "copy_3.jpg"}
        }
        assert len(sides) == 1, f"seed {seed}: identical files split across {sides}"
        assert sum(result.counts()["train"].values()) + sum(result.counts()["test"].values()) == 41
    assert "groups of identical files" in result.summary


def test_bad_files_are_listed_and_not_copied(source, tmp_path):
    (source / "Jade" / "notes.txt").write_text("not a photo")
    (source / "Ruby" / "empty.jpg").write_bytes(b"")
    (source / "Ruby" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")  # hidden: ignored silently
    (source / "README.txt").write_text("loose file, in no class")
    out = tmp_path / "gems"
    result = prepare_dataset(source, out)
    reasons = {p.relative_to(source).as_posix(): reason for p, reason in ((r.path, r.reason) for r in result.rejected)}
    assert reasons == {"Jade/notes.txt": "not an image", "Ruby/empty.jpg": "empty file (0 bytes)", "README.txt": "not in a class folder"}
    names = {p.name for p in iter_files(out)}
    assert not names & {"notes.txt", "empty.jpg", ".DS_Store", "README.txt"}
    assert len(names) == 37
    for listed in ("Jade/notes.txt: not an image", "Ruby/empty.jpg: empty file (0 bytes)", "3 file(s) not copied"):
        assert listed in result.summary


def test_refuses_to_overwrite_a_non_empty_output(source, tmp_path):
    out = tmp_path / "gems"
    (out / "train").mkdir(parents=True)
    (out / "train" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="gems.*not empty"):
        prepare_dataset(source, out)
    assert relative_files(out) == ["train/keep.txt"]
    assert not list(tmp_path.glob("gems.tmp-*"))


def test_an_empty_output_folder_is_used(source, tmp_path):
    out = tmp_path / "gems"
    out.mkdir()
    prepare_dataset(source, out)
    assert check_dataset_dir(out) == sorted(CLASSES)


@pytest.mark.parametrize("mode", ["link", "symlink"])
def test_link_modes(source, tmp_path, mode):
    out = tmp_path / "gems"
    result = prepare_dataset(source, out, mode=mode)
    record = result.test.records[0]
    target = result.destination("test", record)
    if mode == "link":
        assert not target.is_symlink() and os.path.samefile(target, record.path)
        assert target.stat().st_nlink == 2
    else:
        assert target.is_symlink() and Path(os.readlink(target)) == record.path.resolve()
    assert file_digest(target) == record.digest
    assert len(iter_files(out)) == 37


@pytest.mark.parametrize(
    "arrange, message",
    [
        (lambda src: None, "does not exist"),
        (lambda src: make_source(src, {"Amber": ((230, 150, 30), 3)}), "at least two"),
        (lambda src: (make_source(src / "train"), make_source(src / "test")), "already split"),
        (lambda src: [(src / n).mkdir(parents=True) for n in ("A", "B")], "with usable images"),
    ],
    ids=["missing", "one class", "already split", "no images"],
)
def test_source_errors(tmp_path, arrange, message):
    src = tmp_path / "photos"
    arrange(src)
    with pytest.raises(DatasetLayoutError, match=message):
        prepare_dataset(src, tmp_path / "gems")
    assert not (tmp_path / "gems").exists()


def test_output_inside_source_is_refused(source):
    with pytest.raises(DatasetLayoutError, match="inside source"):
        prepare_dataset(source, source / "split")


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1])
def test_bad_test_fraction(source, tmp_path, fraction):
    with pytest.raises(ValueError, match="test-fraction"):
        prepare_dataset(source, tmp_path / "gems", test_fraction=fraction)


def test_cli_missing_source_exits_2_with_a_message(tmp_path, capsys):
    status = main(["--source", str(tmp_path / "nowhere"), "--output", str(tmp_path / "gems")])
    err = capsys.readouterr().err
    assert status == 2
    assert err.startswith("error: ") and "nowhere" in err and "does not exist" in err
    assert "Traceback" not in err


def test_cli_existing_output_exits_2(source, tmp_path, capsys):
    (tmp_path / "gems").mkdir()
    (tmp_path / "gems" / "x").write_text("x")
    assert main(["--source", str(source), "--output", str(tmp_path / "gems")]) == 2
    assert "not empty" in capsys.readouterr().err


def test_cli_prints_the_summary(source, tmp_path, capsys):
    status = main(
        ["--source", str(source), "--output", str(tmp_path / "gems"), "--test-fraction", "0.25", "--seed", "1", "--mode", "symlink"]
    )
    out = capsys.readouterr().out
    assert status == 0
    assert "Symlinked 37 images of 3 classes" in out and "Amber" in out
    assert (tmp_path / "gems" / "test" / "Amber").is_dir()


def test_cli_bad_mode_is_an_argparse_error(source, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--source", str(source), "--output", str(tmp_path / "gems"), "--mode", "move"])
    assert exit_info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err

"""Tests for the procedural gem dataset generator."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gem_lightning.data.tools import synthetic
from gem_lightning.data.tools.synthetic import SYNTHETIC_CLASSES, generate_gem_dataset

SMALL = dict(num_classes=4, train_per_class=3, test_per_class=2, image_size=48)


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_gem_dataset(tmp_path_factory.mktemp("gems") / "data", seed=0, **SMALL)


def test_classes_need_combined_cues() -> None:
    names = [c.name for c in SYNTHETIC_CLASSES]
    assert len(SYNTHETIC_CLASSES) == 12 and len(set(names)) == 12
    combos = {(round(c.hue), c.shape, c.facets) for c in SYNTHETIC_CLASSES}
    assert len(combos) == 12
    for cue in ("hue", "shape", "facets"):
        values = [getattr(c, cue) for c in SYNTHETIC_CLASSES]
        assert len(set(values)) < len(values), f"{cue} alone would separate every class"


def test_layout_and_counts(small_dataset: Path) -> None:
    expected = sorted(c.name for c in SYNTHETIC_CLASSES[:4])
    for split, count in (("train", 3), ("test", 2)):
        folders = sorted(p for p in (small_dataset / split).iterdir())
        assert [p.name for p in folders] == expected
        for folder in folders:
            files = sorted(folder.iterdir())
            assert len(files) == count
            slug = folder.name.lower().replace(" ", "_")
            assert all(f.suffix == ".jpg" and f.name.startswith(slug + "_") for f in files)
    assert not list(small_dataset.parent.glob("*.tmp-*"))


def test_images_are_rgb_jpeg_of_requested_size(small_dataset: Path) -> None:
    for path in small_dataset.rglob("*.jpg"):
        with Image.open(path) as image:
            assert image.format == "JPEG"
            assert image.mode == "RGB"
            assert image.size == (48, 48)


def test_marker_records_parameters(small_dataset: Path) -> None:
    marker = json.loads((small_dataset / ".complete").read_text())
    assert {k: marker[k] for k in SMALL} == SMALL
    assert marker["seed"] == 0


def test_deterministic_per_seed(small_dataset: Path, tmp_path: Path) -> None:
    same = generate_gem_dataset(tmp_path / "same", seed=0, **SMALL)
    other = generate_gem_dataset(tmp_path / "other", seed=1, **SMALL)
    rel = Path("train", SYNTHETIC_CLASSES[2].name, f"{SYNTHETIC_CLASSES[2].slug}_0001.jpg")
    assert (same / rel).read_bytes() == (small_dataset / rel).read_bytes()
    assert (other / rel).read_bytes() != (small_dataset / rel).read_bytes()


def test_second_call_reuses_and_new_params_regenerate(tmp_path: Path) -> None:
    root = tmp_path / "data"
    generate_gem_dataset(root, **SMALL)
    probe = next((root / "train").rglob("*.jpg"))
    stamp = probe.stat().st_mtime_ns
    assert generate_gem_dataset(root, **SMALL) == root
    assert probe.stat().st_mtime_ns == stamp
    probe.write_bytes(b"sentinel")
    generate_gem_dataset(root, **{**SMALL, "test_per_class": 1})
    assert len(list((root / "test").rglob("*.jpg"))) == 4
    assert probe.read_bytes() != b"sentinel"
    assert json.loads((root / ".complete").read_text())["test_per_class"] == 1


def test_incomplete_root_is_not_mistaken_for_complete(tmp_path: Path) -> None:
    root = tmp_path / "data"
    generate_gem_dataset(root, **SMALL)
    (root / ".complete").write_text("{truncated")
    (root / "train" / SYNTHETIC_CLASSES[0].name).rename(root / "junk")
    generate_gem_dataset(root, **SMALL)
    assert (root / "train" / SYNTHETIC_CLASSES[0].name).is_dir() and not (root / "junk").exists()


def test_interrupted_generation_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def failing_render(*args, **kwargs):
        calls.append(1)
        if len(calls) > 3:
            raise KeyboardInterrupt
        return real_render(*args, **kwargs)

    real_render = synthetic.render_gem
    monkeypatch.setattr(synthetic, "render_gem", failing_render)
    with pytest.raises(KeyboardInterrupt):
        generate_gem_dataset(tmp_path / "data", **SMALL)
    assert list(tmp_path.iterdir()) == []


def test_refuses_to_clobber_foreign_directory(tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError):
        generate_gem_dataset(tmp_path / "mine", **SMALL)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_too_many_classes_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=str(len(SYNTHETIC_CLASSES))):
        generate_gem_dataset(tmp_path / "x", num_classes=len(SYNTHETIC_CLASSES) + 1)
    assert not (tmp_path / "x").exists()


def _centre_redness(folder: Path) -> float:
    values = []
    for path in folder.glob("*.jpg"):
        rgb = np.asarray(Image.open(path), np.float32)
        s = rgb.shape[0]
        centre = rgb[s // 4 : 3 * s // 4, s // 4 : 3 * s // 4]
        values.append(float((centre[..., 0] - centre[..., 1]).mean()))
    return float(np.median(values))


def test_colour_is_a_class_cue(tmp_path: Path) -> None:
    root = generate_gem_dataset(tmp_path / "colour", num_classes=2, train_per_class=12, test_per_class=0, image_size=40)
    ruby, emerald = SYNTHETIC_CLASSES[0], SYNTHETIC_CLASSES[1]
    assert "Ruby" in ruby.name and "Emerald" in emerald.name
    assert _centre_redness(root / "train" / ruby.name) > 40
    assert _centre_redness(root / "train" / emerald.name) < -20

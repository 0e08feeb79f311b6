"""Tests for gem_lightning.reports: files are real PNG/CSV/Markdown and numbers are right."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchmetrics.functional.classification import multiclass_f1_score, multiclass_precision, multiclass_recall

from gem_lightning.reports import confusion, confusion_figure, curves, grids, markdown, tables


# --------------------------------------------------------------------------- helpers
def _png_size(path: Path) -> tuple[int, int]:
    """Open ``path`` with PIL, assert it is a PNG, return (width, height)."""
    assert path.is_file(), path
    with Image.open(path) as im:
        assert im.format == "PNG"
        im.load()  # fully decodes: a truncated file fails here
        return im.size


def _confusion_from(preds: np.ndarray, target: np.ndarray, num_classes: int) -> np.ndarray:
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (target, preds), 1)
    return cm


def _photo(path: Path, colour: tuple[int, int, int], size=(120, 90)) -> Path:
    Image.new("RGB", size, colour).save(path)
    return path


# Class 2 is never predicted (precision must be 0, not NaN).
SMALL_CM = np.array([[3, 1, 0], [1, 2, 0], [1, 1, 0]])
SMALL_EXPECTED = [
    # precision, recall, f1, support
    (3 / 5, 3 / 4, 2 / 3, 4),
    (2 / 4, 2 / 3, 4 / 7, 3),
    (0.0, 0.0, 0.0, 2),
]


# --------------------------------------------------------------------------- metrics
def test_per_class_metrics_hand_computed():
    rows = confusion.per_class_metrics(SMALL_CM, ["a", "b", "c"])
    assert [r["class"] for r in rows] == ["a", "b", "c"]
    for row, (p, r, f, s) in zip(rows, SMALL_EXPECTED):
        assert row["precision"] == pytest.approx(p)
        assert row["recall"] == pytest.approx(r)
        assert row["f1"] == pytest.approx(f)
        assert row["support"] == s
    # Without names, the class is the index.
    assert [r["class"] for r in confusion.per_class_metrics(SMALL_CM)] == [0, 1, 2]


def test_per_class_metrics_match_torchmetrics():
    rng = np.random.default_rng(0)
    num_classes = 6
    target = rng.integers(0, num_classes, size=400)
    preds = np.where(rng.random(400) < 0.6, target, rng.integers(0, num_classes, size=400))
    preds[preds == 5] = 4  # class 5 is never predicted -> zero_division path
    cm = _confusion_from(preds, target, num_classes)
    rows = confusion.per_class_metrics(cm)

    p_t, t_t = torch.as_tensor(preds), torch.as_tensor(target)
    kwargs = dict(num_classes=num_classes, average=None)
    expected = {
        "precision": multiclass_precision(p_t, t_t, **kwargs),
        "recall": multiclass_recall(p_t, t_t, **kwargs),
        "f1": multiclass_f1_score(p_t, t_t, **kwargs),
    }
    for key, values in expected.items():
        np.testing.assert_allclose([r[key] for r in rows], values.numpy(), atol=1e-6, err_msg=key)
    assert rows[5]["precision"] == 0.0
    assert [r["support"] for r in rows] == np.bincount(target, minlength=num_classes).tolist()


def test_per_class_csv_round_trips(tmp_path):
    names = ["Alpha", "Beta, with comma", "Gamma"]
    out = tables.write_per_class_csv(SMALL_CM, names, tmp_path / "sub" / "per_class.csv")
    assert out == tmp_path / "sub" / "per_class.csv"
    with out.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["class", "precision", "recall", "f1", "support"]
    assert [r["class"] for r in rows] == names
    for row, (p, r, f, s) in zip(rows, SMALL_EXPECTED):
        assert float(row["precision"]) == pytest.approx(p, abs=1e-12)
        assert float(row["recall"]) == pytest.approx(r, abs=1e-12)
        assert float(row["f1"]) == pytest.approx(f, abs=1e-12)
        assert int(row["support"]) == s


def test_name_count_mismatch_raises(tmp_path):
    with pytest.raises(ValueError, match="class names"):
        tables.write_per_class_csv(SMALL_CM, ["a", "b"], tmp_path / "x.csv")
    with pytest.raises(ValueError, match="square"):
        confusion.per_class_metrics(np.zeros((2, 3)))


def test_most_confused_pairs_order():
    cm = np.array(
        [
            [10, 3, 0, 0],  # a->b: 3 of 13
            [0, 5, 3, 1],  # b->c: 3 of 9 (same count, larger fraction: first)
            [4, 0, 20, 0],  # c->a: 4 of 24 (largest count)
            [0, 0, 0, 7],
        ]
    )
    pairs = confusion.most_confused_pairs(cm, ["a", "b", "c", "d"], k=10)
    assert [(t, p, c) for t, p, c, _ in pairs] == [
        ("c", "a", 4),
        ("b", "c", 3),
        ("a", "b", 3),
        ("b", "d", 1),
    ]
    assert pairs[0][3] == pytest.approx(4 / 24)
    assert pairs[1][3] == pytest.approx(3 / 9)
    assert confusion.most_confused_pairs(cm, ["a", "b", "c", "d"], k=2) == pairs[:2]
    assert confusion.most_confused_pairs(np.diag([3, 4]), ["x", "y"]) == []


# --------------------------------------------------------------------------- ordering
def test_cluster_order_puts_mutually_confused_classes_together():
    n = 10
    cm = np.diag(np.full(n, 20))
    cm[0, 7] = cm[7, 0] = 6  # 0 and 7 confuse each other a lot
    cm[2, 3] = 1  # a little unrelated noise
    cm[9, 4] = 1
    order = confusion.cluster_order(cm)
    assert sorted(order.tolist()) == list(range(n))
    pos = {c: i for i, c in enumerate(order.tolist())}
    assert abs(pos[0] - pos[7]) == 1
    assert abs(pos[2] - pos[3]) == 1


def test_cluster_order_keeps_chains_in_sequence_and_identity_when_no_confusion():
    cm = np.diag(np.full(8, 10))
    for a, b in [(1, 5), (5, 6)]:  # chain 1 <-> 5 <-> 6
        cm[a, b] = cm[b, a] = 3
    order = confusion.cluster_order(cm).tolist()
    i = order.index(5)
    assert {order[i - 1], order[i + 1]} == {1, 6}
    assert confusion.cluster_order(np.diag([5, 5, 5, 5])).tolist() == [0, 1, 2, 3]


# --------------------------------------------------------------------------- confusion PNG
def test_confusion_png_88_classes_is_large_and_3_classes_is_small(tmp_path):
    rng = np.random.default_rng(1)
    n = 88
    cm = np.diag(rng.integers(5, 15, size=n)) + (rng.random((n, n)) < 0.02)
    names = [f"Class name {i:02d}" for i in range(n)]
    big = confusion_figure.confusion_matrix_png(cm, names, tmp_path / "cm88.png", title="Test")
    w_big, h_big = _png_size(big)
    assert w_big >= 1500 and h_big >= 1500

    small = confusion_figure.confusion_matrix_png(SMALL_CM, ["a", "b", "c"], tmp_path / "out" / "cm3.png")
    w_small, h_small = _png_size(small)
    assert w_small < 1500 and h_small < 1500
    assert w_small < w_big


def test_confusion_png_survives_empty_rows(tmp_path):
    cm = np.array([[0, 0], [1, 3]])  # class 0 has no samples
    _png_size(confusion_figure.confusion_matrix_png(cm, ["x", "y"], tmp_path / "cm.png"))


# --------------------------------------------------------------------------- image grids
def test_misclassified_gallery(tmp_path):
    photos = [_photo(tmp_path / f"{i}.jpg", (40 * i, 80, 160)) for i in range(5)]
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    items = [(p, "Aventurine Yellow", "Sapphire Purple", 0.87) for p in photos]
    items.append((broken, "Ruby", "Garnet Red", 0.5))
    calls = []

    def loader(path: Path) -> Image.Image:
        calls.append(Path(path))
        with Image.open(path) as im:
            return im.convert("RGB")

    out = grids.misclassified_gallery_png(items, tmp_path / "g" / "gallery.png", image_loader=loader)
    width, height = _png_size(out)
    assert width > 400 and height > 300
    assert calls == [Path(p) for p, *_ in items]

    limited = grids.misclassified_gallery_png(items, tmp_path / "two.png", max_images=2)
    assert _png_size(limited)[0] < width


def test_misclassified_gallery_empty(tmp_path):
    out = grids.misclassified_gallery_png([], tmp_path / "empty.png")
    width, height = _png_size(out)
    assert 50 < width < 1000 and height < 400


def test_prediction_grid(tmp_path):
    photos = [_photo(tmp_path / f"{i}.png", (200, 30 * i, 10)) for i in range(7)]
    items = [(p, "Ruby", "Ruby" if i % 2 else "Garnet Red", 0.5) for i, p in enumerate(photos)]
    items.append((photos[0], "Onyx Black", None, 0.99))
    out = grids.prediction_grid_png(items, tmp_path / "pred.png")
    assert _png_size(out)[0] > 300
    _png_size(grids.prediction_grid_png([], tmp_path / "none.png"))


def test_image_grid(tmp_path):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, size=(64, 48, 3), dtype=np.uint8) for _ in range(5)]
    images.append(rng.random((32, 32)))  # greyscale float in [0, 1] is accepted
    titles = ["original"] + [f"augmented {i}" for i in range(1, 6)]
    out = grids.image_grid_png(images, titles, tmp_path / "grid.png", ncols=3, title="Augmentations")
    width, height = _png_size(out)
    assert width > height  # 3 columns x 2 rows
    with pytest.raises(ValueError, match="titles"):
        grids.image_grid_png(images, titles[:2], tmp_path / "bad.png")


# --------------------------------------------------------------------------- learning curves
SPARSE_METRICS = """epoch,step,lr-Adam,train/loss_step,train/acc,train/loss,val/acc,val/loss
0,49,0.001,2.5,,,,
0,99,,2.1,,,,
0,99,,,,,0.41,1.9
0,99,,,0.30,2.2,,
1,149,,1.6,,,,
1,199,,1.2,,,,
1,199,,,,,0.62,1.3
1,199,,,0.55,1.4,,
2,249,,0.9,,,,
2,299,,,,,0.70,1.1
2,299,,,0.72,0.95,,
"""


def test_read_epoch_curves_uses_epoch_level_columns(tmp_path):
    csv_path = tmp_path / "metrics.csv"
    csv_path.write_text(SPARSE_METRICS)
    epoch_curves = curves.read_epoch_curves(csv_path)
    epochs, loss = epoch_curves["train/loss"]
    assert epochs.tolist() == [0, 1, 2]
    np.testing.assert_allclose(loss, [2.2, 1.4, 0.95])  # not the step-level values
    np.testing.assert_allclose(epoch_curves["val/acc"][1], [0.41, 0.62, 0.70])

    # train/loss_epoch is preferred over train/loss when both exist.
    both = tmp_path / "both.csv"
    both.write_text("epoch,step,train/loss,train/loss_epoch\n0,9,5.0,\n0,9,,1.5\n")
    np.testing.assert_allclose(curves.read_epoch_curves(both)["train/loss"][1], [1.5])


def test_learning_curves_png(tmp_path):
    csv_path = tmp_path / "logs" / "metrics.csv"
    csv_path.parent.mkdir()
    csv_path.write_text(SPARSE_METRICS)
    out = curves.learning_curves_png(csv_path, tmp_path / "curves.png")
    width, height = _png_size(out)
    assert width > height > 200

    # Only val loss logged (e.g. a one-epoch smoke run): still a picture.
    only_val = tmp_path / "only_val.csv"
    only_val.write_text("epoch,step,val/loss\n0,5,1.0\n")
    _png_size(curves.learning_curves_png(only_val, tmp_path / "only_val.png"))


def test_learning_curves_without_metric_columns_raises(tmp_path):
    csv_path = tmp_path / "no_metrics.csv"
    csv_path.write_text("epoch,step,lr-Adam\n0,10,0.001\n1,20,0.001\n")
    with pytest.raises(ValueError, match="no_metrics.csv"):
        curves.learning_curves_png(csv_path, tmp_path / "x.png")
    empty_cols = tmp_path / "empty_cols.csv"
    empty_cols.write_text("epoch,step,val/loss\n0,10,\n")
    with pytest.raises(ValueError, match="empty_cols.csv"):
        curves.learning_curves_png(empty_cols, tmp_path / "y.png")
    assert not (tmp_path / "x.png").exists()


# --------------------------------------------------------------------------- markdown
def test_markdown_report_links_and_tables(tmp_path):
    report_dir = tmp_path / "report"
    figures = report_dir / "figures"
    names = ["Alpha", "Beta", "Gamma"]
    files = {
        "Confusion matrix": confusion_figure.confusion_matrix_png(SMALL_CM, names, figures / "confusion matrix.png"),
        "Per-class metrics (CSV)": tables.write_per_class_csv(SMALL_CM, names, report_dir / "per_class.csv"),
        "Outside file": grids.misclassified_gallery_png([], tmp_path / "elsewhere" / "gallery.png"),
    }
    rows = confusion.per_class_metrics(SMALL_CM, names)
    pairs = confusion.most_confused_pairs(SMALL_CM, names)
    md_path = markdown.write_markdown_report(
        report_dir / "report.md",
        title="Gemstones | test set",
        metrics={"test/acc": 5 / 9, "test/loss": 0.91234567},
        files=files,
        confused_pairs=pairs,
        per_class_rows=rows,
    )
    text = md_path.read_text()
    assert text.startswith("# Gemstones | test set\n")
    assert "| test/acc | 0.5556 |" in text

    links = re.findall(r"\]\(([^)]+)\)", text)
    assert len(links) == 3
    for link in links:
        assert not Path(link).is_absolute()
        assert (md_path.parent / link.replace("%20", " ")).is_file(), link
    assert "![Confusion matrix](figures/confusion%20matrix.png)" in text
    assert "(../elsewhere/gallery.png)" in text

    # Confused pairs table present, per-class table worst F1 first.
    assert "| Alpha | Beta | 1 | 25.0% |" in text
    per_class = text.split("## Per-class metrics (worst F1 first)")[1]
    order = [line.split("|")[1].strip() for line in per_class.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert order == ["Gamma", "Beta", "Alpha"]

"""Evaluation reports, learning curves, prediction grids and the augmentation preview, on real training runs."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import GEMSTONES, datamodule_kwargs, make_dataset, requires_gemstones
from helpers import TINY_NETWORK
from lightning.pytorch import Trainer, seed_everything
from lightning.pytorch.loggers import CSVLogger
from PIL import Image

from gem_lightning.data.datamodule import GemDataModule
from gem_lightning.reports.calibration import reliability_bins
from gem_lightning.reports.evaluation import SampleResult, misclassified_items
from gem_lightning.reports.grids import misclassified_gallery_png
from gem_lightning.reports.prediction_grid import write_prediction_grid
from gem_lightning.reports.preview import augmentation_preview
from gem_lightning.training.callbacks.prediction_writer import PredictionWriter
from gem_lightning.training.callbacks.reports import EvaluationReport, LearningCurves, where_it_looked
from gem_lightning.training.metrics import ECE_BINS
from gem_lightning.training.module import GemClassifier

REPORT_FILES = (
    "confusion_matrix.png",
    "misclassified.png",
    "misclassified.csv",
    "reliability.png",
    "per_class.csv",
    "confused_pairs.csv",
    "metrics.json",
    "report.md",
)


def tiny_model(class_names: list[str]) -> GemClassifier:
    return GemClassifier(class_names, 32, network=TINY_NETWORK)


def cpu_trainer(root: Path, callbacks: list, **overrides) -> Trainer:
    kwargs = dict(
        max_epochs=2,
        accelerator="cpu",
        devices=1,
        logger=CSVLogger(root, name="run"),
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        default_root_dir=root,
        callbacks=callbacks,
    )
    return Trainer(**{**kwargs, **overrides})


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """One training run (2 epochs), then ``validate`` and ``test``, with the report callbacks."""
    root = tmp_path_factory.mktemp("reports")
    seed_everything(0)
    datamodule = GemDataModule(str(make_dataset(root / "gems")), **datamodule_kwargs(root / "cache"))
    model = tiny_model(datamodule.class_names)
    report = EvaluationReport()
    trainer = cpu_trainer(root, [report, LearningCurves()])
    trainer.fit(model, datamodule=datamodule)
    log_dir = Path(trainer.log_dir)
    report_after_fit = (log_dir / "report-val").exists()
    [val_metrics] = trainer.validate(model, datamodule=datamodule, verbose=False)
    val_results = list(report._results)
    [test_metrics] = trainer.test(model, datamodule=datamodule, verbose=False)
    return SimpleNamespace(
        root=root,
        log_dir=log_dir,
        datamodule=datamodule,
        model=model,
        trainer=trainer,
        metrics={"val": val_metrics, "test": test_metrics},
        val_results=val_results,
        report_after_fit=report_after_fit,
    )


def assert_png(path: Path, min_side: int = 150) -> None:
    """``path`` is a PNG file that decodes, of a size a person can read."""
    assert path.is_file(), path
    with Image.open(path) as image:
        assert image.format == "PNG"
        image.load()
        assert min(image.size) >= min_side, (path, image.size)


def read_per_class(path: Path) -> list[dict]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_misclassified_gallery_shows_where_the_model_looked(run, tmp_path):
    paths = run.datamodule.paths("test")[:3]
    items = [(path, "Blue Stone", run.datamodule.class_names[2], 0.5) for path in paths]
    overlays = where_it_looked(run.trainer, items)  # Grad-CAM of the predicted class, as the model saw the photo
    assert [overlay.shape for overlay in overlays] == [(32, 32, 3)] * 3
    plain = misclassified_gallery_png(items, tmp_path / "plain.png")
    beside = misclassified_gallery_png(items, tmp_path / "cam.png", overlays=overlays)
    with Image.open(plain) as without, Image.open(beside) as with_maps:
        assert with_maps.size[0] > without.size[0]


def test_fit_alone_writes_no_evaluation_report(run):
    assert not run.report_after_fit


@pytest.mark.parametrize("stage", ["val", "test"])
def test_report_folder_holds_every_file_and_readable_pngs(run, stage):
    folder = run.log_dir / f"report-{stage}"
    assert sorted(p.name for p in folder.iterdir()) == sorted(REPORT_FILES)
    assert_png(folder / "confusion_matrix.png", min_side=500)
    assert_png(folder / "misclassified.png")
    report = (folder / "report.md").read_text()
    for name in REPORT_FILES[:-1]:
        assert f"({name})" in report, name


@pytest.mark.parametrize("stage", ["val", "test"])
def test_per_class_csv_agrees_with_the_logged_metrics(run, stage):
    logged = run.metrics[stage]
    rows = read_per_class(run.log_dir / f"report-{stage}" / "per_class.csv")
    support = np.array([int(r["support"]) for r in rows])
    recall = np.array([float(r["recall"]) for r in rows])
    f1 = np.array([float(r["f1"]) for r in rows])
    assert [r["class"] for r in rows] == run.datamodule.class_names
    assert support.sum() == len(run.datamodule.datasets[stage]) == logged[f"{stage}/samples"]
    assert (recall * support).sum() / support.sum() == pytest.approx(logged[f"{stage}/acc"], abs=1e-6)
    assert f1.mean() == pytest.approx(logged[f"{stage}/f1"], abs=1e-5)


@pytest.mark.parametrize("stage", ["val", "test"])
def test_metrics_json_holds_the_logged_headline_metrics(run, stage):
    saved = json.loads((run.log_dir / f"report-{stage}" / "metrics.json").read_text())
    logged = run.metrics[stage]
    assert saved["stage"] == stage
    assert saved["samples"] == len(run.datamodule.datasets[stage])
    for name in ("acc", "acc_top5", "f1", "ece", "loss"):
        assert saved[name] == pytest.approx(logged[f"{stage}/{name}"], abs=1e-7), name


def test_reliability_diagram_bins_give_the_logged_calibration_error(run):
    confidences, correct = [r.probability for r in run.val_results], [r.prediction == r.target for r in run.val_results]
    rows = reliability_bins(confidences, correct, bins=ECE_BINS)
    assert sum(count for *_, count in rows) == len(confidences)
    ece = sum(count * abs(accuracy - mean) for _, mean, accuracy, count in rows) / len(confidences)
    assert ece == pytest.approx(run.metrics["val"]["val/ece"], abs=1e-5)
    assert_png(run.log_dir / "report-val" / "reliability.png")


def test_every_validation_image_is_in_the_per_image_results_once(run):
    indices = [r.index for r in run.val_results]
    assert sorted(indices) == list(range(len(run.datamodule.datasets["val"])))
    rows = read_per_class(run.log_dir / "report-val" / "per_class.csv")
    correct = sum(round(float(r["recall"]) * int(r["support"])) for r in rows)
    assert sum(r.prediction != r.target for r in run.val_results) == len(indices) - correct
    assert_misclassified_csv_is_complete(run.log_dir / "report-val", run.datamodule)


def assert_misclassified_csv_is_complete(folder: Path, datamodule: GemDataModule) -> None:
    """``misclassified.csv`` names each wrongly classified validation file once, with its true class."""
    rows = read_per_class(folder / "per_class.csv")
    wrong = len(datamodule.datasets["val"]) - sum(round(float(r["recall"]) * int(r["support"])) for r in rows)
    with (folder / "misclassified.csv").open(newline="") as handle:
        listed = list(csv.DictReader(handle))
    assert len(listed) == len({row["path"] for row in listed}) == wrong
    val_paths = {str(path) for path in datamodule.paths("val")}
    for row in listed:
        assert row["path"] in val_paths and Path(row["path"]).parent.name == row["true"] != row["predicted"]


def test_misclassified_items_name_the_files_most_confident_first():
    results = [SampleResult(0, 0, 0, 0.9), SampleResult(1, 1, 0, 0.6), SampleResult(2, 0, 1, 0.8)]
    paths = [Path("a.jpg"), Path("b.jpg"), Path("c.jpg")]
    assert misclassified_items(results, paths, ["x", "y"]) == [(Path("c.jpg"), "x", "y", 0.8), (Path("b.jpg"), "y", "x", 0.6)]
    assert misclassified_items(results, None, ["x", "y"]) is None


def test_learning_curves_png_is_drawn_next_to_metrics_csv(run):
    assert (run.log_dir / "metrics.csv").is_file()
    assert_png(run.log_dir / "learning_curves.png")


def test_during_fit_reports_each_validation_without_a_csv_logger(tmp_path, isolated_cache):
    datamodule = GemDataModule(str(make_dataset(tmp_path / "gems")), **datamodule_kwargs(isolated_cache))
    trainer = cpu_trainer(tmp_path, [EvaluationReport(during_fit=True), LearningCurves()], logger=False)
    trainer.fit(tiny_model(datamodule.class_names), datamodule=datamodule)
    rows = read_per_class(tmp_path / "report-val" / "per_class.csv")
    # two epochs and a sanity check ran, yet the matrix holds one validation epoch exactly
    assert sum(int(r["support"]) for r in rows) == len(datamodule.datasets["val"])
    assert not list(tmp_path.rglob("learning_curves.png"))  # no CSVLogger: skipped, no error


def test_prediction_grid_from_the_prediction_writer_csv(run, tmp_path):
    datamodule = GemDataModule(predict_path=str(run.root / "gems" / "test"), **datamodule_kwargs(run.root / "cache"))
    output = tmp_path / "predictions.csv"
    trainer = Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, callbacks=[PredictionWriter(str(output))])
    trainer.predict(run.model, datamodule=datamodule, return_predictions=False)
    grid = write_prediction_grid(output, tmp_path / "grid.png", run.datamodule.class_names)
    assert grid == tmp_path / "grid.png"
    assert_png(grid)


def test_augmentation_preview_is_reproducible_and_leaves_the_rng_alone(tmp_path, isolated_cache):
    datamodule = GemDataModule(str(make_dataset(tmp_path / "gems")), **datamodule_kwargs(isolated_cache))
    datamodule.prepare_data()
    datamodule.setup("fit")
    state = torch.get_rng_state()
    first = augmentation_preview(datamodule, tmp_path / "a", n_augmented=3, n_batch=4)
    assert torch.equal(torch.get_rng_state(), state)
    second = augmentation_preview(datamodule, tmp_path / "b", n_augmented=3, n_batch=4)
    assert [p.name for p in first] == ["augmentation_preview.png", "train_batch.png"]
    for one, other in zip(first, second):
        assert_png(one)
        assert one.read_bytes() == other.read_bytes()


@requires_gemstones
def test_augmentation_preview_on_real_photos(tmp_path, isolated_cache):
    """A handful of real photos, linked (not copied) into a small train/ folder."""
    for name in sorted(os.listdir(GEMSTONES / "train"))[:3]:
        (tmp_path / "gems" / "train" / name).mkdir(parents=True)
        for photo in sorted((GEMSTONES / "train" / name).iterdir())[:6]:
            (tmp_path / "gems" / "train" / name / photo.name).symlink_to(photo)
    datamodule = GemDataModule(str(tmp_path / "gems"), **datamodule_kwargs(isolated_cache, image_size=220))
    datamodule.prepare_data()
    datamodule.setup("fit")
    augmentation, batch = augmentation_preview(datamodule, tmp_path / "preview")
    assert_png(augmentation, min_side=400)
    assert_png(batch, min_side=600)


@pytest.mark.slow
def test_report_is_exact_under_ddp(tmp_path, isolated_cache):
    """Two CPU processes (gloo) split the validation set unevenly; the report still covers it exactly once."""
    datamodule = GemDataModule(str(make_dataset(tmp_path / "gems")), **datamodule_kwargs(isolated_cache))
    trainer = cpu_trainer(tmp_path, [EvaluationReport()], devices=2, strategy="ddp_spawn", logger=False)
    trainer.validate(tiny_model(datamodule.class_names), datamodule=datamodule, verbose=False)
    folder = tmp_path / "report-val"
    saved = json.loads((folder / "metrics.json").read_text())
    rows = read_per_class(folder / "per_class.csv")
    datamodule.setup("validate")
    assert saved["samples"] == sum(int(r["support"]) for r in rows) == len(datamodule.datasets["val"]) == 9
    correct = sum(round(float(r["recall"]) * int(r["support"])) for r in rows)
    assert saved["acc"] == pytest.approx(correct / 9, abs=1e-6)
    assert_misclassified_csv_is_complete(folder, datamodule)

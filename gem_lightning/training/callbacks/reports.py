"""Callbacks that turn what a run measured into files a person can open.

* :class:`EvaluationReport` writes ``report-<stage>/`` (confusion matrix, per-class metrics,
  most-confused pairs, a gallery of misclassified photos, headline metrics, ``report.md``) into
  the run folder after ``validate`` and ``test``.
* :class:`LearningCurves` draws ``learning_curves.png`` next to the CSVLogger's ``metrics.csv``
  at the end of ``fit``.
* :func:`write_prediction_grid` draws a grid of predicted photos from a predictions CSV.

The numbers, figures and files themselves come from :mod:`gem_lightning.reports` (``confusion``,
``confusion_figure``, ``grids``, ``curves``, ``tables``, ``markdown``); this module only gathers the
numbers (exactly, across DDP processes) and decides where the files go.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from typing_extensions import override

from gem_lightning.data.images import load_rgb
from gem_lightning.reports.calibration import reliability_diagram_png
from gem_lightning.reports.confusion import most_confused_pairs, per_class_metrics
from gem_lightning.reports.confusion_figure import confusion_matrix_png
from gem_lightning.reports.curves import learning_curves_png
from gem_lightning.reports.grids import misclassified_gallery_png, prediction_grid_png
from gem_lightning.reports.markdown import write_markdown_report
from gem_lightning.reports.tables import write_per_class_csv
from gem_lightning.training.metrics import ACC, ACC_TOP5, ECE, ECE_BINS, F1, LOSS, SAMPLES

HEADLINE_METRICS = (ACC, ACC_TOP5, F1, ECE, LOSS, SAMPLES)
"""Logged metrics (without the ``<stage>/`` prefix) that ``metrics.json`` and ``report.md`` show."""


class SampleResult(NamedTuple):
    """What the report needs to know about one evaluated image."""

    index: int
    """Position in the stage's dataset; ``datamodule.paths(stage)[index]`` is its file."""
    target: int
    prediction: int
    probability: float
    """Probability of the predicted class."""


class EvaluationReport(Callback):
    """Writes an evaluation report into ``<run folder>/report-<stage>/`` after validate and test.

    The confusion matrix comes from the module's ``val_confusion`` / ``test_confusion`` metric,
    computed on every process so that under DDP it covers every sample exactly once; per-image
    results (for the gallery of misclassified photos) are gathered from all processes. Only
    global rank 0 writes files.

    Args:
        during_fit: also write ``report-val/`` after each validation inside ``fit`` (overwritten
            every epoch, so it describes the latest one). Off by default: a report per epoch
            costs time and nobody reads the intermediate ones.
        max_gallery: at most this many misclassified photos are drawn, most confident first.
        top_pairs: how many most-confused (true, predicted) pairs are listed.
        cam: beside each misclassified photo, where the model looked for the class it predicted
            (Grad-CAM; needs the ``audit`` extra, ``grad-cam``: without it the gallery shows the photos alone).
    """

    def __init__(self, during_fit: bool = False, max_gallery: int = 36, top_pairs: int = 15, cam: bool = True) -> None:
        self.during_fit = during_fit
        self.max_gallery = max_gallery
        self.top_pairs = top_pairs
        self.cam = cam
        self._results: list[SampleResult] = []

    def _active(self, trainer: Trainer) -> bool:
        """Whether the evaluation now running gets a report."""
        if trainer.sanity_checking:
            return False
        return self.during_fit or trainer.state.fn != TrainerFn.FITTING

    # Collecting -----------------------------------------------------------------------------

    @override
    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._results = []

    @override
    def on_test_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._results = []

    @override
    def on_validation_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        if self._active(trainer):
            self._collect(outputs)

    @override
    def on_test_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        if self._active(trainer):
            self._collect(outputs)

    def _collect(self, outputs: dict[str, torch.Tensor]) -> None:
        """Keep index, target, predicted class and its probability of every image in the batch."""
        probability, prediction = outputs["probs"].detach().float().max(dim=-1)
        rows = zip(outputs["indices"].tolist(), outputs["targets"].tolist(), prediction.tolist(), probability.tolist())
        self._results += [SampleResult(*row) for row in rows]

    # Writing --------------------------------------------------------------------------------

    @override
    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._active(trainer):
            self._finish(trainer, "val")

    @override
    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._active(trainer):
            self._finish(trainer, "test")

    def _finish(self, trainer: Trainer, stage: str) -> None:
        """Synchronise on every process (collectives), then write on global rank 0 only.

        Runs in ``on_<stage>_end``, after Lightning has put the epoch's metrics into
        ``trainer.callback_metrics``.
        """
        results = gather_results(self._results)
        out_dir = Path(trainer.log_dir) / f"report-{stage}"  # log_dir broadcasts: call it everywhere
        if not trainer.is_global_zero:
            return
        class_names = list(trainer.lightning_module.class_names)
        matrix = confusion_matrix(results, len(class_names))
        misclassified = misclassified_items(results, _stage_paths(trainer, stage), class_names)
        write_evaluation_report(
            out_dir,
            stage=stage,
            confusion=matrix,
            class_names=class_names,
            metrics=headline_metrics(trainer.callback_metrics, stage),
            misclassified=misclassified,
            reliability=([r.probability for r in results], [r.prediction == r.target for r in results]),
            max_gallery=self.max_gallery,
            top_pairs=self.top_pairs,
            overlays=where_it_looked(trainer, misclassified[: self.max_gallery]) if self.cam and misclassified else None,
        )
        rank_zero_info(f"Wrote the {stage} report to {out_dir / 'report.md'}")


def confusion_matrix(results: list[SampleResult], num_classes: int) -> np.ndarray:
    """Counts of (true, predicted) pairs; rows are true classes."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    for result in results:
        matrix[result.target, result.prediction] += 1
    return matrix


def gather_results(results: list[SampleResult]) -> list[SampleResult]:
    """Every process's per-image results, on every process, sorted by dataset index.

    Under DDP the evaluation sampler gives each process a different, unpadded share of the
    images, so the shares have different lengths; ``all_gather_object`` handles that.
    """
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return sorted(results)
    shares: list[list[SampleResult] | None] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(shares, results)
    return sorted(row for share in shares for row in share)


def headline_metrics(callback_metrics: dict[str, torch.Tensor], stage: str) -> dict[str, float | int]:
    """The stage's logged :data:`HEADLINE_METRICS`, unprefixed (``samples`` as an int)."""
    metrics: dict[str, float | int] = {}
    for name in HEADLINE_METRICS:
        key = f"{stage}/{name}"
        if key in callback_metrics:
            value = float(callback_metrics[key])
            metrics[name] = int(round(value)) if name == SAMPLES else value
    return metrics


def _stage_paths(trainer: Trainer, stage: str) -> list[Path] | None:
    """The files behind the stage's dataset indices, or None when the data module cannot say."""
    paths = getattr(trainer.datamodule, "paths", None)
    if paths is None:
        rank_zero_warn("EvaluationReport: the data module has no `paths(stage)`, so the report has no gallery of misclassified images.")
        return None
    return paths(stage)


def where_it_looked(trainer: Trainer, items: list[tuple[Path, str, str, float]]) -> list | None:
    """Grad-CAM overlays of the predicted class for the gallery's photos, decoded as the model saw
    them; None (the photos alone) when ``grad-cam`` is not installed."""
    try:
        from gem_lightning.audit.cam import file_overlays
    except ImportError:
        rank_zero_info(
            "EvaluationReport: install gem-lightning[audit] (grad-cam) to see where the model looked in the misclassified gallery."
        )
        return None
    module = trainer.lightning_module
    names = list(module.class_names)
    layer = module.network_spec.cam_layer(module.model.network)
    return file_overlays(
        module.model,
        layer,
        [path for path, *_ in items],
        [names.index(predicted) for _, _, predicted, _ in items],
        trainer.datamodule.settings,
        module.hparams.image_size,
    )


def misclassified_items(
    results: Sequence[SampleResult], paths: Sequence[Path] | None, class_names: Sequence[str]
) -> list[tuple[Path, str, str, float]] | None:
    """``(file, true name, predicted name, probability)`` of every wrong prediction, most confident first.

    None (no gallery) when ``paths`` is None.
    """
    if paths is None:
        return None
    wrong = sorted((r for r in results if r.prediction != r.target), key=lambda r: (-r.probability, r.index))
    return [(Path(paths[r.index]), class_names[r.target], class_names[r.prediction], r.probability) for r in wrong]


def write_evaluation_report(
    out_dir: Path,
    *,
    stage: str,
    confusion: np.ndarray,
    class_names: list[str],
    metrics: dict[str, float | int],
    misclassified: list[tuple[Path, str, str, float]] | None,
    reliability: tuple[Sequence[float], Sequence[bool]] | None = None,
    max_gallery: int = 36,
    top_pairs: int = 15,
    overlays: Sequence[np.ndarray | None] | None = None,
) -> dict[str, Path]:
    """Write every report file into ``out_dir``, and ``report.md`` linking them.

    Pure function of its arguments (no Lightning), so it can be called from a notebook too.

    Args:
        out_dir: the report folder (created).
        stage: ``val`` or ``test``; goes into titles and ``metrics.json``.
        confusion: ``C x C`` counts, rows = true class, columns = predicted class.
        class_names: one name per row of ``confusion``.
        metrics: headline metrics for ``metrics.json`` and the report's table.
        misclassified: ``(file, true name, predicted name, probability)`` of every wrong
            prediction, in gallery order; None leaves the gallery and its CSV out.
        reliability: every photo's top-1 probability and whether it was right, for the
            reliability diagram; None leaves it out.
        max_gallery: at most this many misclassified photos are drawn.
        top_pairs: how many most-confused pairs are listed.
        overlays: where the model looked, one per drawn misclassified photo (None: the photos alone).

    Returns:
        The written files by their title in ``report.md``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pairs = most_confused_pairs(confusion, class_names, k=top_pairs)
    files = {
        "Confusion matrix": confusion_matrix_png(
            confusion, class_names, out_dir / "confusion_matrix.png", title=f"Confusion matrix ({stage})"
        )
    }
    if misclassified is not None:
        files["Misclassified images"] = misclassified_gallery_png(
            misclassified, out_dir / "misclassified.png", max_images=max_gallery, image_loader=load_rgb, overlays=overlays
        )
        files["Every misclassified image (CSV)"] = _write_misclassified_csv(misclassified, out_dir / "misclassified.csv")
    if reliability is not None:
        files["Reliability diagram"] = reliability_diagram_png(
            *reliability, out_dir / "reliability.png", ece=metrics.get(ECE), bins=ECE_BINS
        )
    files["Per-class metrics (CSV)"] = write_per_class_csv(confusion, class_names, out_dir / "per_class.csv")
    files["Most confused pairs (CSV)"] = _write_pairs_csv(pairs, out_dir / "confused_pairs.csv")
    files["Headline metrics (JSON)"] = _write_json({"stage": stage, **metrics}, out_dir / "metrics.json")
    files["Report"] = write_markdown_report(
        out_dir / "report.md",
        title=f"Evaluation report: {stage}",
        metrics=metrics,
        files=files,
        confused_pairs=pairs,
        per_class_rows=per_class_metrics(confusion, class_names),
    )
    return files


def _write_pairs_csv(pairs: Sequence[tuple[str, str, int, float]], path: Path) -> Path:
    """The most-confused pairs as CSV: true, predicted, count, share of the true class."""
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["true", "predicted", "count", "share_of_true"])
        writer.writerows([true, predicted, count, repr(share)] for true, predicted, count, share in pairs)
    return path


def _write_misclassified_csv(items: Sequence[tuple[Path, str, str, float]], path: Path) -> Path:
    """All misclassified files (the gallery draws only the first few): path, true, predicted, probability."""
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "true", "predicted", "probability"])
        writer.writerows([str(file), true, predicted, f"{probability:.6f}"] for file, true, predicted, probability in items)
    return path


def _write_json(data: dict[str, Any], path: Path) -> Path:
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return path


class LearningCurves(Callback):
    """At the end of ``fit``, draws ``learning_curves.png`` next to the CSVLogger's ``metrics.csv``.

    Loss and accuracy per epoch, training and validation. Needs a
    :class:`~lightning.pytorch.loggers.CSVLogger` among the trainer's loggers (the CLI's default);
    without one it says so and writes nothing.
    """

    @override
    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        logger = next((logger for logger in trainer.loggers if isinstance(logger, CSVLogger)), None)
        if logger is None:
            rank_zero_info("LearningCurves: no CSVLogger among the trainer's loggers, so no learning_curves.png.")
            return
        logger.save()  # CSVLogger buffers rows until it saves
        metrics_csv = Path(logger.experiment.metrics_file_path)
        try:
            path = learning_curves_png(metrics_csv, metrics_csv.with_name("learning_curves.png"))
        except (FileNotFoundError, ValueError) as error:  # e.g. a fit that ran no epoch
            rank_zero_warn(f"LearningCurves: no learning curves drawn: {error}")
            return
        rank_zero_info(f"Wrote learning curves to {path}")


def write_prediction_grid(predictions_csv: Path, out_png: Path, class_names: Sequence[str], max_images: int = 25) -> Path:
    """Draw predicted photos from a :class:`PredictionWriter` CSV, titled with their predictions.

    When a photo's parent folder is one of ``class_names`` (a ``test/<Class>/`` folder), that is
    taken as its true class and the title is green or red; otherwise it is black. With more rows
    than ``max_images``, evenly spaced rows are drawn, so a folder sorted by class shows many
    classes rather than the first one only.

    Args:
        predictions_csv: the writer's CSV (columns ``path``, ``prediction``, ``probability``, ...).
        out_png: the grid to write.
        class_names: the model's classes, to recognise class-named folders.
        max_images: at most this many photos are drawn.

    Returns:
        ``out_png``.
    """
    with Path(predictions_csv).open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    known = set(class_names)
    items = [
        (Path(row["path"]), row["prediction"], _folder_class(row["path"], known), float(row["probability"]))
        for row in _evenly_spaced(rows, max_images)
    ]
    return prediction_grid_png(items, Path(out_png), max_images=max_images, image_loader=load_rgb)


def _folder_class(path: str, class_names: set[str]) -> str | None:
    """The name of ``path``'s parent folder if it is a class name, else None (truth unknown)."""
    parent = Path(path).parent.name
    return parent if parent in class_names else None


def _evenly_spaced(rows: list[dict[str, str]], count: int) -> list[dict[str, str]]:
    """``count`` rows spread evenly over ``rows`` (all of them when there are no more)."""
    if len(rows) <= count:
        return rows
    return [rows[i * len(rows) // count] for i in range(count)]

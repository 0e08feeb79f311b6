"""Callbacks that turn what a run measured into files a person can open.

* :class:`EvaluationReport` writes ``report-<stage>/`` (confusion matrix, per-class metrics,
  most-confused pairs, a gallery of misclassified photos, headline metrics, ``report.md``) into
  the run folder after ``validate`` and ``test``.
* :class:`LearningCurves` draws ``learning_curves.png`` next to the CSVLogger's ``metrics.csv``
  at the end of ``fit``.

The numbers, figures and files themselves come from :mod:`gem_lightning.reports` (``evaluation``
writes the report folder, ``curves`` the learning curves); this module only gathers the numbers
(exactly, across DDP processes) and decides where the files go.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from typing_extensions import override

from gem_lightning.reports.curves import learning_curves_png
from gem_lightning.reports.evaluation import Reliability, SampleResult, confusion_matrix, misclassified_items, write_evaluation_report
from gem_lightning.reports.multilabel import write_multilabel_report
from gem_lightning.training.metrics import ACC, ACC_TOP5, ECE, ECE_BINS, F1, LOSS, MAP, MAP_MICRO, SAMPLES

HEADLINE_METRICS = (ACC, ACC_TOP5, MAP, MAP_MICRO, F1, ECE, LOSS, SAMPLES)
"""Logged metrics (without the ``<stage>/`` prefix) that ``metrics.json`` and ``report.md`` show."""


class EvaluationReport(Callback):
    """Writes an evaluation report into ``<run folder>/report-<stage>/`` after validate and test.

    Every image's result (target, prediction, its probability) is gathered from all processes, so
    under DDP the confusion matrix and the gallery of misclassified photos cover every sample
    exactly once. Only global rank 0 writes files.

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
        self._label_results: list[tuple[int, torch.Tensor, torch.Tensor]] = []

    def _active(self, trainer: Trainer) -> bool:
        """Whether the evaluation now running gets a report."""
        if trainer.sanity_checking:
            return False
        return self.during_fit or trainer.state.fn != TrainerFn.FITTING

    # Collecting -----------------------------------------------------------------------------

    @override
    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._results, self._label_results = [], []

    @override
    def on_test_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._results, self._label_results = [], []

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
        """Keep index, target, predicted class and its probability of every image in the batch (multi-label:
        its probabilities and targets)."""
        if outputs["targets"].ndim == 2:
            rows = zip(outputs["indices"].tolist(), outputs["probs"].detach().float().cpu(), outputs["targets"].cpu())
            self._label_results += [(index, probs, targets) for index, probs, targets in rows]
            return
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
        label_results = gather_results(self._label_results)
        out_dir = Path(trainer.log_dir) / f"report-{stage}"  # log_dir broadcasts: call it everywhere
        if not trainer.is_global_zero:
            return
        if label_results:
            self._write_multilabel(trainer, stage, label_results, out_dir)
            return
        class_names = list(trainer.lightning_module.class_names)
        matrix = confusion_matrix(results, len(class_names))
        misclassified = misclassified_items(results, _stage_paths(trainer, stage), class_names)
        metrics = headline_metrics(trainer.callback_metrics, stage)
        write_evaluation_report(
            out_dir,
            stage=stage,
            confusion=matrix,
            class_names=class_names,
            metrics=metrics,
            misclassified=misclassified,
            reliability=Reliability(
                [r.probability for r in results], [r.prediction == r.target for r in results], ece=metrics.get(ECE), bins=ECE_BINS
            ),
            max_gallery=self.max_gallery,
            top_pairs=self.top_pairs,
            overlays=where_it_looked(trainer, misclassified[: self.max_gallery]) if self.cam and misclassified else None,
        )
        rank_zero_info(f"Wrote the {stage} report to {out_dir / 'report.md'}")

    @staticmethod
    def _write_multilabel(trainer: Trainer, stage: str, results: list, out_dir: Path) -> None:
        _, probs, targets = zip(*results)
        module = trainer.lightning_module
        files = write_multilabel_report(
            out_dir,
            probs=torch.stack(probs),
            targets=torch.stack(targets),
            thresholds=module.multilabel.thresholds.cpu(),
            class_names=list(module.class_names),
            metrics=headline_metrics(trainer.callback_metrics, stage),
        )
        rank_zero_info(f"Wrote the {stage} report (average precision per label) to {files['per_label'].parent}")


def gather_results(results: list) -> list:
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
        from gem_lightning.reports.cam import file_overlays
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

"""Metric names shared by the module, the checkpoint callback, the reports and the configs."""

from __future__ import annotations

from torchmetrics import MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassCalibrationError,
    MulticlassF1Score,
    MultilabelAveragePrecision,
    MultilabelF1Score,
)

LOSS = "loss"
ACC = "acc"
ACC_TOP5 = "acc_top5"
F1 = "f1"
ECE = "ece"
SAMPLES = "samples"
MAP = "map"
MAP_MICRO = "map_micro"

ECE_BINS = 15
"""Confidence bins of the expected calibration error (the usual 15)."""

MONITOR = f"val/{ACC}"
"""What checkpointing and early stopping watch by default (maximised)."""
MULTILABEL_MONITOR = f"val/{MAP}"
"""What they watch instead for a multi-label model: its macro mean average precision."""


def classification_metrics(num_classes: int, prefix: str, *, calibration: bool = False) -> MetricCollection:
    """Top-1 and top-5 accuracy and macro F1, named ``<prefix>acc``, ``<prefix>acc_top5``, ``<prefix>f1``;
    with ``calibration``, also the expected calibration error of the probabilities, ``<prefix>ece``."""
    metrics = {
        ACC: MulticlassAccuracy(num_classes, average="micro"),
        ACC_TOP5: MulticlassAccuracy(num_classes, top_k=min(5, num_classes), average="micro"),
        F1: MulticlassF1Score(num_classes, average="macro"),
    }
    if calibration:
        metrics[ECE] = MulticlassCalibrationError(num_classes, n_bins=ECE_BINS, norm="l1")
    return MetricCollection(
        metrics,
        prefix=prefix,
        compute_groups=False,  # grouping shares micro-averaged states with the macro F1 and corrupts it
    )


def multilabel_ranking_metrics(num_labels: int, prefix: str) -> MetricCollection:
    """Mean average precision over labels (``<prefix>map``, macro) and over every (image, label) pair
    (``<prefix>map_micro``): how well each label's probabilities rank its photos, whatever the thresholds."""
    return MetricCollection(
        {MAP: MultilabelAveragePrecision(num_labels, average="macro"), MAP_MICRO: MultilabelAveragePrecision(num_labels, average="micro")},
        prefix=prefix,
        compute_groups=False,
    )


def multilabel_decision_metrics(num_labels: int, prefix: str) -> MetricCollection:
    """Macro F1 of the label sets answered (``<prefix>f1``); updated with 0/1 decisions at the stored thresholds."""
    return MetricCollection({F1: MultilabelF1Score(num_labels, average="macro")}, prefix=prefix)

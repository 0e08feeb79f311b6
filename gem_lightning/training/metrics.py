"""Metric names shared by the module, the checkpoint callback, the reports and the configs."""

from __future__ import annotations

from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassCalibrationError, MulticlassF1Score

LOSS = "loss"
ACC = "acc"
ACC_TOP5 = "acc_top5"
F1 = "f1"
ECE = "ece"
SAMPLES = "samples"

ECE_BINS = 15
"""Confidence bins of the expected calibration error (the usual 15)."""

MONITOR = f"val/{ACC}"
"""What checkpointing and early stopping watch by default (maximised)."""


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

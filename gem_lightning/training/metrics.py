"""Metric names shared by the module, the checkpoint callback, the reports and the configs."""

from __future__ import annotations

from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

LOSS = "loss"
ACC = "acc"
ACC_TOP5 = "acc_top5"
F1 = "f1"
SAMPLES = "samples"

MONITOR = f"val/{ACC}"
"""What checkpointing and early stopping watch by default (maximised)."""


def classification_metrics(num_classes: int, prefix: str) -> MetricCollection:
    """Top-1 and top-5 accuracy and macro F1, named ``<prefix>acc``, ``<prefix>acc_top5``, ``<prefix>f1``."""
    return MetricCollection(
        {
            ACC: MulticlassAccuracy(num_classes, average="micro"),
            ACC_TOP5: MulticlassAccuracy(num_classes, top_k=min(5, num_classes), average="micro"),
            F1: MulticlassF1Score(num_classes, average="macro"),
        },
        prefix=prefix,
        compute_groups=False,  # grouping shares micro-averaged states with the macro F1 and corrupts it
    )

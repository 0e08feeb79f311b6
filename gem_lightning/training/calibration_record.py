"""Everything ``calibrate`` fits on held-out photos, in the form a checkpoint keeps it (``checkpoint["calibration"]``).

- the temperature (written into the hyperparameters, ``model.temperature``, as before);
- for prediction sets, each held-out photo's probability mass above its true class and that class's
  rank, so that any coverage is answered later (:mod:`gem_lightning.training.conformal`);
- for "unknown", the class statistics of the training photos' penultimate features and each held-out
  photo's score of every kind, so that any false-rejection rate is answered later
  (:mod:`gem_lightning.training.unknown`);
- for a multi-label checkpoint, only the probabilities of each held-out photo's true labels: its
  label sets' promise (``label_coverage``, :mod:`gem_lightning.training.conformal`). Its thresholds per
  label were tuned by ``fit`` and its sigmoid outputs keep their temperature.

Everything is a tensor or a plain value: the checkpoint still loads with ``weights_only``.
"""

from __future__ import annotations

from typing import Any

from gem_lightning.training.calibration import expected_calibration_error, fit_temperature, with_temperature
from gem_lightning.training.conformal import (
    conformal_threshold,
    label_coverage_threshold,
    prediction_sets,
    raps_scores,
    true_class_standing,
    true_label_probs,
)
from gem_lightning.training.held_out import Measured
from gem_lightning.training.unknown import fit_knn, fit_mahalanobis, rejection_threshold, unknown_scores

RECORD_VERSION = 1
RAPS_LAMBDA = 0.01
RAPS_K_REG = 2
"""RAPS's penalty on each class ranked below ``k_reg``, set beforehand (RAPS's order of magnitude for
photos of many classes); on the gemstones validation split every penalty up to 0.2 gave sets within
0.1 class of it at 0.9 (docs/answers.md)."""


def fit_calibration(
    held_out: Measured, training: Measured | None, *, temperature: float, tta: str, description: str, lam: float = RAPS_LAMBDA,
    k_reg: int = RAPS_K_REG,
) -> tuple[float, dict[str, Any], dict[str, float]]:  # fmt: skip
    """The new temperature, the record and a summary of what was fitted.

    Args:
        held_out: the held-out photos, as the model answered them (with ``temperature``).
        training: the training photos (features for the class statistics), or None.
        temperature: the checkpoint's temperature when ``held_out`` was measured.
        tta: the test-time augmentation they were measured with (the record holds for it).
        description: where the held-out photos came from, for the record.
        lam, k_reg: RAPS's penalty.
    """
    relative = fit_temperature(held_out.probs, held_out.targets)
    probs = with_temperature(held_out.probs, relative)
    mass_above, rank = true_class_standing(probs, held_out.targets)
    statistics = {}
    if training is not None and training.features is not None:
        statistics = {
            "mahalanobis": fit_mahalanobis(training.features, training.targets),
            "knn": fit_knn(training.features),
        }
    kinds = ("msp",) + (("energy",) if held_out.logits is not None else ()) + (("mahalanobis", "knn") if statistics else ())
    scores = unknown_scores(kinds, statistics, probs, held_out.logits, held_out.features)
    record = {
        "version": RECORD_VERSION,
        "held_out": description,
        "photos": len(held_out.targets),
        "tta": tta,
        "conformal": {"mass_above": mass_above, "rank": rank, "lambda": lam, "k_reg": k_reg},
        "unknown": {"held_out": scores, **statistics, "training_photos": len(training.targets) if statistics else 0},
    }
    threshold = conformal_threshold(raps_scores(mass_above, rank, lam, k_reg), 0.9)
    summary = {
        "photos": len(held_out.targets),
        "temperature": temperature * relative,  # the held-out probabilities already carried the old one
        "ece_before": expected_calibration_error(held_out.probs, held_out.targets),
        "ece_after": expected_calibration_error(probs, held_out.targets),
        "set_size_at_0.9": sum(map(len, prediction_sets(probs, threshold, lam, k_reg))) / len(probs),
        **{f"unknown_threshold_{kind}_at_0.05": rejection_threshold(values, 0.05) for kind, values in scores.items()},
    }
    return summary["temperature"], record, summary


def fit_label_coverage(
    held_out: Measured, *, temperature: float, tta: str, description: str
) -> tuple[float, dict[str, Any], dict[str, float]]:
    """A multi-label checkpoint's record: its temperature as it is, the record of its label sets'
    promise, and a summary (what a set at coverage 0.9 holds on these photos)."""
    probs, counts = true_label_probs(held_out.probs, held_out.targets)
    record = {
        "version": RECORD_VERSION,
        "task": "multilabel",
        "held_out": description,
        "photos": len(counts),
        "tta": tta,
        "label_coverage": {"true_probs": probs, "counts": counts},
    }
    chosen = held_out.probs >= label_coverage_threshold(probs, counts, 0.9)  # the sets of labels_above
    truth = held_out.targets.bool()
    summary = {
        "photos": len(counts),
        "temperature": temperature,
        "labels_per_photo": float(counts.float().mean()),
        "set_size_at_0.9": float(chosen.sum(1).float().mean()),
        "label_coverage_at_0.9": float(((chosen & truth).sum(1) / truth.sum(1).clamp_min(1)).mean()),
    }
    return temperature, record, summary

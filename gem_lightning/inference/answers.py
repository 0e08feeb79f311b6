"""What ``predict``, ``serve`` and the Python API answer beside the ranked classes: a prediction set that
holds the true class with a chosen probability, and "unknown" for a photo unlike every class.

Both come from what ``calibrate`` kept in the checkpoint (:mod:`gem_lightning.training.calibration_record`):
the threshold for the chosen coverage or false-rejection rate is computed here, from the held-out
photos' scores, so any value between 0 and 1 works without calibrating again.

- ``coverage``: the smallest set of classes (RAPS, :mod:`gem_lightning.training.conformal`) that holds
  the true class of a photo like the held-out ones with probability at least ``coverage``; for a
  multi-label checkpoint, the labels above one threshold, set so that a photo's set holds on average
  at least ``coverage`` of its true labels (conformal risk control of the false-negative rate).
- ``unknown``: a false-rejection rate; a photo whose score (``unknown_score``,
  :mod:`gem_lightning.training.unknown`) is above the held-out photos' threshold for that rate is
  answered ``unknown`` (and gets an empty set): about that share of photos of the known classes are too.
  The feature scores (``mahalanobis``, ``knn``) and ``energy`` need the torch network (its penultimate
  layer); with ONNX Runtime, only ``msp`` is answered.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch

from gem_lightning.errors import UserInputError
from gem_lightning.models.features import PenultimateTap, view_count
from gem_lightning.training.conformal import conformal_threshold, label_coverage_threshold, labels_above, prediction_sets, raps_scores
from gem_lightning.training.unknown import NEEDS_FEATURES, NEEDS_LOGITS, SCORES, rejection_threshold, unknown_scores

UnknownScore = Literal["auto", "msp", "energy", "mahalanobis", "knn"]
PREFERRED_SCORES = ("knn", "mahalanobis", "msp", "energy")
"""What ``unknown_score: auto`` uses: the first of these the checkpoint holds (best first on the gemstones, docs/answers.md)."""
UNKNOWN = "unknown"
CALIBRATE = "python main.py calibrate --ckpt_path <ckpt> --output <calibrated.ckpt> --config <training config> --data.data_dir <dir>"


@dataclass(frozen=True)
class AnswerSettings:
    """What to answer beside the ranked classes.

    Args:
        coverage: the probability that a photo's prediction set holds its true class (0 to 1, exclusive); None: no set.
        unknown: the share of photos of known classes that may be answered ``unknown`` (0 to 1, exclusive); None: never.
        unknown_score: ``msp``, ``energy``, ``mahalanobis`` or ``knn``; ``auto``: the best the checkpoint holds.
    """

    coverage: float | None = None
    unknown: float | None = None
    unknown_score: str = "auto"

    @property
    def asked(self) -> bool:
        return self.coverage is not None or self.unknown is not None

    def checked(self, prefix: str = "") -> AnswerSettings:
        """Itself, or one line naming each setting (``prefix`` + its name) that cannot work."""
        problems = []
        if self.coverage is not None and not 0 < self.coverage < 1:
            problems.append(
                f"{prefix}coverage must be above 0 and below 1 (how often a prediction set holds the true class), got {self.coverage}"
            )
        if self.unknown is not None and not 0 < self.unknown < 1:
            problems.append(
                f"{prefix}unknown must be above 0 and below 1 (the share of photos of known classes answered unknown), got {self.unknown}"
            )
        if self.unknown_score not in ("auto", *SCORES):
            problems.append(f"{prefix}unknown_score must be auto or one of {', '.join(SCORES)}, got {self.unknown_score!r}")
        elif self.unknown_score != "auto" and self.unknown is None:
            problems.append(f"{prefix}unknown_score chooses the score of {prefix}unknown: give {prefix}unknown <false-rejection rate> too")
        if problems:
            raise UserInputError("; ".join(problems) + ".")
        return self


def check_calibration(
    record: dict | None, settings: AnswerSettings, *, tta: str, runtime: str = "torch", prefix: str = "", checkpoint: str = ""
) -> str | None:
    """The ``unknown`` score that ``settings`` use (None without ``unknown``), once the checkpoint's
    ``record`` is shown to answer them. Needs no network, so ``serve`` checks before any worker starts.

    Raises:
        UserInputError: the checkpoint holds no calibration, or not the score asked for, or was
            calibrated with another test-time augmentation; or the score needs the torch network.
    """
    asked = " and ".join(f"{prefix}{name}" for name in ("coverage", "unknown") if getattr(settings, name) is not None)
    if record is None:
        raise UserInputError(f"{asked} needs a calibrated checkpoint, and {checkpoint} is not one: run `{CALIBRATE}` first.")
    if record["tta"] != tta:
        raise UserInputError(
            f"{checkpoint} was calibrated with test-time augmentation {record['tta']!r}, on which {asked} rely: "
            f"give --model.tta {record['tta']} (or calibrate again with {tta})."
        )
    if settings.unknown is None:
        return None
    if record.get("task") == "multilabel":
        raise UserInputError(
            f"{prefix}unknown answers single-label checkpoints; {checkpoint} is multi-label, and answers a photo that shows "
            "none of its labels with an empty label set: leave it out."
        )
    held = record["unknown"]["held_out"]
    kind = next(kind for kind in PREFERRED_SCORES if kind in held) if settings.unknown_score == "auto" else settings.unknown_score
    if kind not in held:
        raise UserInputError(
            f"{prefix}unknown_score {kind}: {checkpoint} holds the scores {', '.join(held)} (the feature scores need the training "
            "photos, --data.data_dir, at calibrate, and a network with a head of its own: not an ensemble)."
        )
    if kind in NEEDS_FEATURES | NEEDS_LOGITS and runtime != "torch":
        raise UserInputError(
            f"{prefix}unknown_score {kind} reads the torch network's penultimate layer, which {runtime} does not give: "
            f"use runtime torch, or {prefix}unknown_score msp."
        )
    return kind


class Answers:
    """Prediction sets and "unknown" for batches of a classifier's probabilities.

    Args:
        record: the checkpoint's ``calibration`` record (None: not calibrated, refused).
        settings: what to answer (already :meth:`AnswerSettings.checked`).
        classifier: the ``GemClassifier`` whose probabilities are answered: its classes, its
            test-time augmentation, and (for the scores that need them) its penultimate features.
        runtime: what runs the network; with ONNX Runtime the features are out of reach.
        prefix: how the settings are named in messages (``inference.``, ``--``).
        checkpoint: the checkpoint's name, for messages.

    Raises:
        UserInputError: as :func:`check_calibration`.
    """

    def __init__(
        self,
        record: dict | None,
        settings: AnswerSettings,
        classifier: Any,
        *,
        runtime: str = "torch",
        prefix: str = "",
        checkpoint: str = "",
    ) -> None:
        self.settings = settings
        self.class_names = list(classifier.class_names)
        self.tta = classifier.model.tta
        self.kind = check_calibration(record, settings, tta=self.tta, runtime=runtime, prefix=prefix, checkpoint=checkpoint)
        self.tap: PenultimateTap | None = None
        self.multilabel = record.get("task") == "multilabel"
        if settings.coverage is not None and self.multilabel:
            true_labels = record["label_coverage"]
            self.set_threshold = label_coverage_threshold(true_labels["true_probs"], true_labels["counts"], settings.coverage)
        elif settings.coverage is not None:
            conformal = record["conformal"]
            self.lam, self.k_reg = float(conformal["lambda"]), int(conformal["k_reg"])
            scores = raps_scores(conformal["mass_above"], conformal["rank"], self.lam, self.k_reg)
            self.set_threshold = conformal_threshold(scores, settings.coverage)
        if self.kind is not None:
            unknown = record["unknown"]
            self.statistics = {name: unknown[name] for name in ("mahalanobis", "knn") if name in unknown}
            self.unknown_threshold = rejection_threshold(unknown["held_out"][self.kind], settings.unknown)
            if self.kind in NEEDS_FEATURES | NEEDS_LOGITS:
                self.tap = PenultimateTap(classifier.network_spec, classifier.model.network)

    def __call__(self, probs: torch.Tensor) -> list[dict[str, Any]]:
        """Per photo of the batch whose probabilities the classifier just answered: ``prediction`` (the top
        class or ``unknown``), and ``prediction_set`` (class names) and/or ``unknown`` and ``unknown_score``."""
        probs = probs.detach().float().cpu()
        answers: list[dict[str, Any]] = [{"prediction": self.class_names[int(label)]} for label in probs.argmax(1)]
        if self.kind is not None:
            features, logits = self.tap.take(view_count(self.tta)) if self.tap else (None, None)
            scores = unknown_scores((self.kind,), self.statistics, probs, *(t if t is None else t.cpu() for t in (logits, features)))
            for answer, score in zip(answers, scores[self.kind].tolist()):
                answer.update(unknown=score > self.unknown_threshold, unknown_score=score)
                if answer["unknown"]:
                    answer["prediction"] = UNKNOWN
        if self.settings.coverage is not None:
            sets = (
                labels_above(probs, self.set_threshold)
                if self.multilabel
                else prediction_sets(probs, self.set_threshold, self.lam, self.k_reg)
            )
            for answer, labels in zip(answers, sets):
                answer["prediction_set"] = [] if answer.get("unknown") else [self.class_names[label] for label in labels]
        return answers

    def close(self) -> None:
        """Stop reading the network's features."""
        if self.tap is not None:
            self.tap.close()

"""Classify photos from Python with a trained checkpoint, no Trainer needed.

    from gem_lightning.inference.api import load_model
    model = load_model("runs/gem/version_0/checkpoints/last.ckpt")
    model.classify("ruby.jpg")          # [("Ruby", 0.91), ("Spinel", 0.05), ...]
    model.labels("ring.jpg")            # a multi-label model's answer: [("Ruby", 0.93), ("Diamond", 0.71)]

Photos are prepared exactly as ``predict`` prepares them (decoded and squeezed to the cache size,
then the evaluation resize), so the answers equal the command line's predictions.
``load_model(ckpt, runtime="onnxruntime")`` (or ``"onnxruntime-int8"``) runs the network with ONNX
Runtime instead of torch (:mod:`gem_lightning.inference.runtime`: exported from the checkpoint on
first use, checked against torch, cached beside it).

With a calibrated checkpoint (``python main.py calibrate``), ``load_model(ckpt, coverage=0.9,
unknown=0.05)`` and ``model.answer("photo.jpg")`` also give the photo's prediction set and say
``unknown`` for a photo unlike every class (:mod:`gem_lightning.inference.answers`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

import torch

from gem_lightning.errors import UserInputError
from gem_lightning.inference.answers import Answers, AnswerSettings
from gem_lightning.inference.preprocessing import Preprocessing
from gem_lightning.inference.runtime import check_runtime, onnx_probabilities, require_onnxruntime
from gem_lightning.tracking.checkpoint_uri import resolve_checkpoint
from gem_lightning.training.checkpoints import load_checkpoint
from gem_lightning.training.combine import CALIBRATION
from gem_lightning.training.module import GemClassifier
from gem_lightning.training.thresholds import label_sets

Ranked = list[tuple[str, float]]
"""``(class name, probability)`` pairs, most probable first."""


class Answer(NamedTuple):
    """One photo's answer.

    Attributes:
        prediction: the most probable class, or ``"unknown"`` (with ``unknown``) for a photo unlike every class.
        ranked: the ``top_k`` most probable classes.
        prediction_set: with ``coverage``, the classes that hold the true one with that probability
            (empty for an unknown photo); else None.
        unknown: with ``unknown``, whether the photo is unlike every class; else None.
        unknown_score: how unlike (higher: less like the training photos), with ``unknown``; else None.
    """

    prediction: str
    ranked: Ranked
    prediction_set: list[str] | None = None
    unknown: bool | None = None
    unknown_score: float | None = None


class GemModel:
    """A trained classifier in eval mode with everything needed to prepare a photo for it.

    Args:
        classifier: the trained module.
        device: where it runs.
        runtime: what runs the network: ``torch``, or ``onnxruntime`` / ``onnxruntime-int8`` (then
            ``probabilities`` is the ONNX Runtime session, and ``device`` only holds the torch module).
        probabilities: ``(B, 3, S, S)`` uint8 images -> ``(B, C)`` probabilities; default: the classifier's.
        answers: prediction sets and "unknown" for each batch of probabilities (``load_model``'s
            ``coverage`` and ``unknown``), or None.
    """

    def __init__(
        self,
        classifier: GemClassifier,
        device: str | torch.device = "cpu",
        runtime: str = "torch",
        probabilities: Callable[[torch.Tensor], torch.Tensor] | None = None,
        answers: Answers | None = None,
    ) -> None:
        self.device = torch.device(device)
        self.classifier = classifier.to(self.device).eval()
        self.class_names: list[str] = list(classifier.class_names)
        self.image_size: int = classifier.hparams.image_size
        self.runtime = runtime
        self.preprocessing = Preprocessing.from_hparams(classifier.hparams)
        self.settings = self.preprocessing.settings
        self._probabilities = probabilities or classifier.predict_proba
        self.multilabel: bool = classifier.multilabel is not None
        self.answers = answers

    def preprocess(self, image_path: str | Path | bytes) -> torch.Tensor:
        """One photo (its path, or the file's bytes) as the ``(3, S, S)`` uint8 tensor that ``predict``
        would feed the model.

        Raises:
            BadImageError: the file cannot be read as an image (the reason is in the message).
        """
        return self.preprocessing(image_path)

    @torch.inference_mode()
    def predict_proba(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, S, S)`` uint8 images -> ``(B, C)`` class probabilities, by the chosen runtime."""
        return self._probabilities(images.to(self.device))

    def classify(self, image_path: str | Path, top_k: int = 5) -> Ranked:
        """The ``top_k`` most probable classes of one photo."""
        return self.classify_many([image_path], top_k=top_k)[0]

    def classify_many(self, paths: Sequence[str | Path], batch_size: int = 32, top_k: int = 5) -> list[Ranked]:
        """The ``top_k`` most probable classes of each photo, in the order given.

        Args:
            paths: image files.
            batch_size: photos per forward pass.
            top_k: classes per photo (at most the number of classes).

        Returns:
            One ``[(class name, probability), ...]`` list per photo, most probable first.

        Raises:
            BadImageError: a file cannot be read as an image.
        """
        return [answer.ranked for answer in self.answer_many(paths, batch_size, top_k)]

    def answer(self, image_path: str | Path, top_k: int = 5) -> Answer:
        """One photo's :class:`Answer`: its top classes, and its prediction set and "unknown" as ``load_model`` asked."""
        return self.answer_many([image_path], top_k=top_k)[0]

    @torch.inference_mode()
    def answer_many(self, paths: Sequence[str | Path], batch_size: int = 32, top_k: int = 5) -> list[Answer]:
        """Each photo's :class:`Answer`, in the order given (see :meth:`classify_many`)."""
        answers: list[Answer] = []
        k = min(top_k, len(self.class_names))
        for start in range(0, len(paths), batch_size):
            probs = self.predict_proba(torch.stack([self.preprocess(path) for path in paths[start : start + batch_size]]))
            extras = self.answers(probs) if self.answers is not None else [{} for _ in probs]
            top_probs, labels = probs.topk(k, dim=-1)
            for row_labels, row_probs, extra in zip(labels.tolist(), top_probs.tolist(), extras):
                ranked = [(self.class_names[label], prob) for label, prob in zip(row_labels, row_probs)]
                answers.append(Answer(**{"prediction": ranked[0][0], **extra, "ranked": ranked}))
        return answers

    def labels(self, image_path: str | Path) -> Ranked:
        """A multi-label model's answer for one photo: the labels at its stored thresholds, most probable first."""
        return self.labels_many([image_path])[0]

    @torch.inference_mode()
    def labels_many(self, paths: Sequence[str | Path], batch_size: int = 32) -> list[Ranked]:
        """Each photo's labels at the stored thresholds (a multi-label model: ``model.task: multilabel``).

        Raises:
            UserInputError: the model is single-label (use :meth:`classify_many`).
            BadImageError: a file cannot be read as an image.
        """
        if not self.multilabel:
            raise UserInputError("labels() answers label sets of a multi-label model; this one is single-label: use classify().")
        answers: list[Ranked] = []
        for start in range(0, len(paths), batch_size):
            images = torch.stack([self.preprocess(path) for path in paths[start : start + batch_size]])
            answers += self.label_sets(self.predict_proba(images))
        return answers

    def label_sets(self, probs: torch.Tensor) -> list[Ranked]:
        """``(B, C)`` probabilities of a multi-label model -> each image's labels at the stored thresholds."""
        sets = label_sets(probs.cpu(), self.classifier.multilabel.thresholds.cpu())
        return [[(self.class_names[label], float(row[label])) for label in chosen] for row, chosen in zip(probs.cpu(), sets)]


def load_model(
    ckpt_path: str | Path,
    device: str | torch.device = "cpu",
    runtime: str = "torch",
    int8_images: str | Path | None = None,
    coverage: float | None = None,
    unknown: float | None = None,
    unknown_score: str = "auto",
) -> GemModel:
    """Load a checkpoint written by training; the checkpoint alone rebuilds the network.

    Args:
        ckpt_path: the ``.ckpt`` file (``str`` or ``Path``), or one kept by MLflow (``runs:/<run id>/<path>``,
            ``models:/<name>/<version>``: downloaded from ``$MLFLOW_TRACKING_URI``'s server).
        device: where the model runs (``cpu``, ``cuda``, ``cuda:1``, ...); ONNX Runtime runs on the CPU.
        runtime: ``torch``; ``onnxruntime`` (the network exported to ONNX from the checkpoint, cached
            beside it, float32); ``onnxruntime-int8`` (quantized; the first time needs ``int8_images``).
        int8_images: a folder or glob of photos like those to classify, for int8's calibration and
            its measured accuracy loss (:mod:`gem_lightning.inference.runtime`).
        coverage: :meth:`GemModel.answer` gives each photo's prediction set, which holds its true
            class with this probability (0 to 1, exclusive). Needs a calibrated checkpoint.
        unknown: :meth:`GemModel.answer` says ``unknown`` for a photo unlike every class, so that this
            share of photos of the known classes are too (0 to 1, exclusive). Needs a calibrated checkpoint.
        unknown_score: ``msp``, ``energy``, ``mahalanobis``, ``knn``, or ``auto`` (the best the checkpoint holds).

    Raises:
        UserInputError: ``ckpt_path`` is missing or not a usable checkpoint, ``runtime`` is unknown or
            its packages missing, the ONNX model is refused, or ``coverage``/``unknown`` are out of range
            or the checkpoint is not calibrated for them; the message says why.
    """
    require_onnxruntime(check_runtime(runtime))
    settings = AnswerSettings(coverage, unknown, unknown_score).checked()
    ckpt_path = resolve_checkpoint(ckpt_path)
    checkpoint = load_checkpoint(ckpt_path)
    classifier = GemClassifier.load_from_checkpoint(Path(ckpt_path), map_location="cpu").eval()
    answers = None
    if settings.asked:
        answers = Answers(checkpoint.get(CALIBRATION), settings, classifier, runtime=runtime, checkpoint=repr(str(ckpt_path)))
    probabilities = None
    if runtime != "torch":
        probabilities = onnx_probabilities(classifier, ckpt_path, runtime, int8_images=int8_images)
    return GemModel(classifier, device, runtime, probabilities, answers)


def classify(image_path: str | Path, ckpt_path: str | Path, top_k: int = 5) -> Ranked:
    """One-off: load ``ckpt_path`` and classify one photo (use :func:`load_model` for many)."""
    return load_model(ckpt_path).classify(image_path, top_k=top_k)

"""``--inference.runtime onnxruntime`` for ``predict``, ``test`` and ``validate``: a Lightning callback.

A callback, not a model setting: which engine runs the network is chosen at inference and never
stored in a checkpoint. When the stage starts (the checkpoint's weights restored), the module's
``predict_proba``, which ``predict_step`` and the evaluation steps call, is handed the ONNX Runtime
session of :mod:`gem_lightning.inference.runtime` (exported from ``--ckpt_path`` on first use, checked
against torch, cached beside it) through ``GemClassifier.set_inference_engine``; when the stage ends
or fails, torch's network answers again.

It also holds what ``predict`` answers beside the ranked classes, another inference-time choice that
no checkpoint stores: ``coverage`` (prediction sets) and ``unknown`` (answered for photos unlike every
class), from the checkpoint's calibration (:mod:`gem_lightning.inference.answers`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lightning.pytorch import Callback, Trainer

from gem_lightning.errors import UserInputError
from gem_lightning.inference.answers import Answers, AnswerSettings, UnknownScore
from gem_lightning.inference.runtime import Runtime, check_runtime, onnx_probabilities, require_onnxruntime
from gem_lightning.training.checkpoints import load_checkpoint
from gem_lightning.training.combine import CALIBRATION

if TYPE_CHECKING:
    from gem_lightning.training.module import GemClassifier


class InferenceRuntime(Callback):
    """Runs ``validate``, ``test`` and ``predict`` with torch or ONNX Runtime.

    Args:
        runtime: ``torch`` (the default), ``onnxruntime`` (the network exported to ONNX, float32) or
            ``onnxruntime-int8`` (quantized; the first time needs ``int8_images``).
        int8_images: a folder or glob of at least 40 photos like those to classify: up to 128 calibrate
            the int8 model, the rest measure what it loses against fp32 (accuracy, when they sit in class
            folders); more than half a point lost refuses int8.
        coverage: ``predict`` also answers each photo's prediction set: the fewest classes that hold
            the true class with this probability (0 to 1, exclusive; e.g. 0.9). Needs a checkpoint
            written by ``python main.py calibrate``.
        unknown: ``predict`` answers ``unknown`` for a photo unlike every class, so that this share of
            photos of the known classes are too (the false-rejection rate, 0 to 1 exclusive; e.g.
            0.05). Needs a calibrated checkpoint.
        unknown_score: how unlike the classes a photo is: ``msp`` (1 - the top probability),
            ``energy`` (of the logits), ``mahalanobis`` or ``knn`` (distance of the penultimate
            features to the training photos'); ``auto``: the best the checkpoint holds.
    """

    def __init__(
        self,
        runtime: Runtime = "torch",
        int8_images: str | None = None,
        coverage: float | None = None,
        unknown: float | None = None,
        unknown_score: UnknownScore = "auto",
    ) -> None:
        self.runtime = check_runtime(runtime)
        self.int8_images = int8_images
        self.answer_settings = AnswerSettings(coverage, unknown, unknown_score).checked("inference.")

    def setup(self, trainer: Trainer, pl_module: GemClassifier, stage: str) -> None:
        if self.answer_settings.asked and stage != "predict":
            raise UserInputError(f"inference.coverage and inference.unknown shape what predict answers, not {stage}: leave them out.")
        if self.runtime == "torch":
            return
        if stage == "fit":
            raise UserInputError(
                f"inference.runtime {self.runtime} is for validate, test and predict with --ckpt_path; fit trains with torch."
            )
        require_onnxruntime(self.runtime)  # before any data is read

    def on_validation_start(self, trainer: Trainer, pl_module: GemClassifier) -> None:
        self._install(trainer, pl_module)

    def on_test_start(self, trainer: Trainer, pl_module: GemClassifier) -> None:
        self._install(trainer, pl_module)

    def on_predict_start(self, trainer: Trainer, pl_module: GemClassifier) -> None:
        self._install(trainer, pl_module)
        if self.answer_settings.asked:  # the checkpoint is known from here on; no photo is read yet
            pl_module.answers = self._answers(trainer, pl_module)

    def on_validation_end(self, trainer: Trainer, pl_module: GemClassifier) -> None:
        self._uninstall(pl_module)

    def on_test_end(self, trainer: Trainer, pl_module: GemClassifier) -> None:
        self._uninstall(pl_module)

    def on_predict_end(self, trainer: Trainer, pl_module: GemClassifier) -> None:
        self._uninstall(pl_module)

    def on_exception(self, trainer: Trainer, pl_module: GemClassifier, exception: BaseException) -> None:
        self._uninstall(pl_module)

    def teardown(self, trainer: Trainer, pl_module: GemClassifier, stage: str) -> None:
        if getattr(pl_module, "answers", None) is not None:
            pl_module.answers.close()
            pl_module.answers = None

    def _answers(self, trainer: Trainer, pl_module: GemClassifier) -> Answers:
        if not trainer.ckpt_path:
            raise UserInputError("inference.coverage and inference.unknown come from a calibrated checkpoint: give --ckpt_path.")
        record = load_checkpoint(trainer.ckpt_path).get(CALIBRATION)
        name = repr(str(trainer.ckpt_path))
        return Answers(record, self.answer_settings, pl_module, runtime=self.runtime, prefix="inference.", checkpoint=name)

    def _install(self, trainer: Trainer, pl_module: GemClassifier) -> None:
        """Make ``pl_module.predict_proba`` answer with the ONNX Runtime session of its checkpoint."""
        if self.runtime == "torch":
            return
        if not trainer.ckpt_path:
            raise UserInputError(f"inference.runtime {self.runtime} exports the network from the checkpoint: give --ckpt_path.")
        engine = onnx_probabilities(pl_module, trainer.ckpt_path, self.runtime, int8_images=self.int8_images)
        pl_module.set_inference_engine(engine)

    def _uninstall(self, pl_module: GemClassifier) -> None:
        if self.runtime != "torch":
            pl_module.set_inference_engine(None)

"""``--inference.runtime onnxruntime`` for ``predict``, ``test`` and ``validate``: a Lightning callback.

A callback, not a model setting: which engine runs the network is chosen at inference and never
stored in a checkpoint, and the module's code stays as it is. When the stage starts (the checkpoint's
weights restored), the module's ``predict_proba``, which ``predict_step`` and the evaluation steps call,
is replaced by the ONNX Runtime session of :mod:`gem_lightning.inference.runtime` (exported from
``--ckpt_path`` on first use, checked against torch, cached beside it); when the stage ends, torch's
is back.
"""

from __future__ import annotations

from lightning.pytorch import Callback, LightningModule, Trainer

from gem_lightning.errors import UserInputError
from gem_lightning.inference.runtime import Runtime, check_runtime, onnx_probabilities, require_onnxruntime


class InferenceRuntime(Callback):
    """Runs ``validate``, ``test`` and ``predict`` with torch or ONNX Runtime.

    Args:
        runtime: ``torch`` (the default), ``onnxruntime`` (the network exported to ONNX, float32) or
            ``onnxruntime-int8`` (quantized; the first time needs ``int8_images``).
        int8_images: a folder or glob of at least 40 photos like those to classify: up to 128 calibrate
            the int8 model, the rest measure what it loses against fp32 (accuracy, when they sit in class
            folders); more than half a point lost refuses int8.
    """

    def __init__(self, runtime: Runtime = "torch", int8_images: str | None = None) -> None:
        self.runtime = check_runtime(runtime)
        self.int8_images = int8_images

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self.runtime == "torch":
            return
        if stage == "fit":
            raise UserInputError(
                f"inference.runtime {self.runtime} is for validate, test and predict with --ckpt_path; fit trains with torch."
            )
        require_onnxruntime(self.runtime)  # before any data is read

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._install(trainer, pl_module)

    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._install(trainer, pl_module)

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._install(trainer, pl_module)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._uninstall(pl_module)

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._uninstall(pl_module)

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._uninstall(pl_module)

    def _install(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Replace ``pl_module.predict_proba`` by the ONNX Runtime session (an instance attribute shadows the method)."""
        if self.runtime == "torch":
            return
        if not trainer.ckpt_path:
            raise UserInputError(f"inference.runtime {self.runtime} exports the network from the checkpoint: give --ckpt_path.")
        pl_module.predict_proba = onnx_probabilities(pl_module, trainer.ckpt_path, self.runtime, int8_images=self.int8_images)

    @staticmethod
    def _uninstall(pl_module: LightningModule) -> None:
        vars(pl_module).pop("predict_proba", None)

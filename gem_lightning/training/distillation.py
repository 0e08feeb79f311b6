"""Knowledge distillation: a trained checkpoint's soft predictions as a second training target."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from gem_lightning.errors import UserInputError


class Teacher:
    """A trained classifier that answers in inference mode; not a part of the student's module,
    so it is neither optimised nor saved in the student's checkpoints.

    Args:
        ckpt_path: the teacher's checkpoint.
        class_names: the student's classes; the teacher must have the same, in the same order.
        autocast: run at the trainer's mixed precision; ``False`` runs in float32 (the faster
            choice on CPUs without native bf16, and for depthwise-conv networks such as EfficientNet).
    """

    def __init__(self, ckpt_path: str, class_names: list[str], autocast: bool = True) -> None:
        from gem_lightning.training.module import GemClassifier  # the module imports this file

        if not Path(ckpt_path).is_file():
            raise UserInputError(f"model.teacher: {ckpt_path!r} does not exist; give the checkpoint of a trained model.")
        model = GemClassifier.load_from_checkpoint(ckpt_path, map_location="cpu")
        if list(model.class_names) != list(class_names):
            raise UserInputError(
                f"model.teacher {ckpt_path!r} was trained on {len(model.class_names)} classes "
                f"({', '.join(model.class_names[:4])}, ...) but the data has {len(class_names)} "
                f"({', '.join(class_names[:4])}, ...): distil from a teacher trained on the same class folders."
            )
        self.classifier = model.model.eval().requires_grad_(False)
        self.image_size: int = model.hparams.image_size
        self.autocast = autocast

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """The teacher's logits for a batch of ``(B, 3, S, S)`` 0-255 images, resized to its own size."""
        self.classifier.to(images.device)
        device = images.device.type
        mixed = self.autocast and torch.is_autocast_enabled(device)
        with torch.inference_mode(), torch.autocast(device, dtype=torch.get_autocast_dtype(device), enabled=mixed):
            if images.shape[-1] != self.image_size:
                images = F.interpolate(images.float(), size=(self.image_size, self.image_size), mode="bilinear", antialias=True)
            logits = self.classifier(images).float()
        return logits.clone()  # outside inference mode: a plain tensor the loss may keep for backward


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton et al.'s soft-target loss: KL(teacher || student) at ``temperature``, times T^2 so its
    gradients keep the scale of the hard-target loss whatever the temperature."""
    student = F.log_softmax(student_logits.float() / temperature, dim=-1)
    teacher = F.log_softmax(teacher_logits / temperature, dim=-1)
    return F.kl_div(student, teacher, log_target=True, reduction="batchmean") * temperature**2

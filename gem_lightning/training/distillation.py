"""Knowledge distillation: a trained checkpoint's soft predictions as a second training target.

:class:`Distillation` is the whole component: its settings (``model.distillation``), their checks
and defaults, the teacher it loads when ``fit`` starts, and how its loss mixes with the labels'.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule

from gem_lightning.errors import UserInputError


@dataclass(frozen=True)
class Distillation:
    """Distil a trained teacher into the network being trained; the student's checkpoint predicts alone.

    Args:
        teacher: a trained checkpoint with the same classes; the loss adds its soft predictions on
            the same augmented batch (run in inference mode, resized to the teacher's image size).
        weight: weight of the distillation term; the hard-label loss gets ``1 - weight``.
        temperature: softmax temperature of the distillation term.
        student_size: the side the student sees, each batch downsampled to it (antialiased), while
            the teacher sees the batch as loaded at ``data.image_size`` (set that to the teacher's
            size): a small, fast student learns from a teacher that sees the detail. The student's
            checkpoint then predicts at this size. Default: the student sees the batch as loaded.
        autocast: run the teacher at the trainer's mixed precision; ``False`` runs it in float32
            (the faster choice on CPUs without native bf16, and for depthwise-conv networks).
    """

    teacher: str | None = None
    weight: float = 0.5
    temperature: float = 2.0
    student_size: int | None = None
    autocast: bool = True

    def check(self) -> None:
        """Refuse settings that cannot work, naming each (the module calls it: jsonargparse would bury
        an error raised while it builds this class under a generic one)."""
        problems = []
        if self.teacher is None:
            problems.append(
                "model.distillation.teacher is not set: distillation needs --model.distillation.teacher <checkpoint of a "
                "trained model with the same classes> (configs/gemstones_distill.yaml says how to train one)"
            )
        elif not Path(self.teacher).is_file():
            problems.append(f"model.distillation.teacher: {self.teacher!r} does not exist; give the checkpoint of a trained model")
        if not 0.0 <= self.weight <= 1.0:
            problems.append(f"model.distillation.weight must be from 0 to 1, got {self.weight}")
        if self.temperature <= 0:
            problems.append(f"model.distillation.temperature must be above 0, got {self.temperature}")
        if self.student_size is not None and self.student_size < 32:
            problems.append(f"model.distillation.student_size must be at least 32 (pixels), got {self.student_size}")
        if problems:
            raise UserInputError("; ".join(problems) + ".")

    def load_teacher(self, student: LightningModule) -> Teacher:
        """The teacher, loaded by the student's own class and checked to have the student's classes."""
        model = type(student).load_from_checkpoint(self.teacher, map_location="cpu")
        if list(model.class_names) != list(student.class_names):
            raise UserInputError(
                f"model.distillation.teacher {self.teacher!r} was trained on {len(model.class_names)} classes "
                f"({', '.join(model.class_names[:4])}, ...) but the data has {len(student.class_names)} "
                f"({', '.join(student.class_names[:4])}, ...): distil from a teacher trained on the same class folders."
            )
        return Teacher(model.model, model.hparams.image_size, self.autocast)

    def mix(self, hard_loss: torch.Tensor, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The training loss, and the distillation term alone (for the log)."""
        soft_loss = distillation_loss(student_logits, teacher_logits, self.temperature)
        return (1 - self.weight) * hard_loss + self.weight * soft_loss, soft_loss


class Teacher:
    """A trained classifier that answers in inference mode; not a part of the student's module,
    so it is neither optimised nor saved in the student's checkpoints.

    Args:
        classifier: the teacher's network with its normalisation (0-255 images in, logits out).
        image_size: the side the teacher was trained at; other batches are resized to it.
        autocast: run at the trainer's mixed precision.
    """

    def __init__(self, classifier: torch.nn.Module, image_size: int, autocast: bool = True) -> None:
        self.classifier = classifier.eval().requires_grad_(False)
        self.image_size = image_size
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

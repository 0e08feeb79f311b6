"""Progressive resizing: training batches start small and grow to ``data.image_size``.

A network learns coarse shapes and colours first; at a fraction of the side, a step costs about the
square of that fraction, so the early part of training is cheap and the last part, at full size,
adapts the network (and its batch-norm statistics) to the size it is evaluated at. The schedule is
MosaicML Composer's ``ProgressiveResizing`` (``initial_scale``, ``delay_fraction``,
``finetune_fraction``, ``size_increment``; its defaults but for the increment); as there, each loaded batch is downsampled on the way in
(antialiased), so the loader, its cache and its persistent workers are unchanged, and the size
follows the optimizer step, so a resumed run resizes exactly as an uninterrupted one. Validation,
test and predict always see ``data.image_size``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from gem_lightning.errors import UserInputError


@dataclass(frozen=True)
class ProgressiveResizing:
    """When and how small training batches are.

    Args:
        initial_scale: the side at the start, as a fraction of ``data.image_size`` (e.g. 0.6: 96 px of 160).
        delay_fraction: share of the training steps spent at ``initial_scale``.
        finetune_fraction: share of the steps, at the end, spent at full size; between the two
            the side grows linearly with the step.
        size_increment: sides are rounded to a multiple of this (few distinct shapes: each new one
            costs a kernel selection on the first step at that shape).
    """

    initial_scale: float = 0.5
    delay_fraction: float = 0.5
    finetune_fraction: float = 0.2
    size_increment: int = 16

    def check(self) -> None:
        problems = []
        if not 0 < self.initial_scale <= 1:
            problems.append(f"initial_scale must be in (0, 1], got {self.initial_scale}")
        if self.delay_fraction < 0 or self.finetune_fraction < 0 or self.delay_fraction + self.finetune_fraction > 1:
            problems.append(
                f"delay_fraction ({self.delay_fraction}) and finetune_fraction ({self.finetune_fraction}) "
                "must be at least 0 and add up to at most 1"
            )
        if self.size_increment < 1:
            problems.append(f"size_increment must be at least 1, got {self.size_increment}")
        if problems:
            raise UserInputError("data.progressive_resizing: " + "; ".join(problems) + ".")

    def size_at(self, progress: float, full_size: int) -> int:
        """The side of training batches ``progress`` (0-1) of the way through training."""
        if progress >= 1 - self.finetune_fraction or self.initial_scale == 1:
            return full_size
        grow = 1 - self.delay_fraction - self.finetune_fraction
        ramp = min(1.0, max(0.0, progress - self.delay_fraction) / grow) if grow > 0 else 0.0
        scale = self.initial_scale + (1 - self.initial_scale) * ramp
        rounded = round(scale * full_size / self.size_increment) * self.size_increment
        return int(min(full_size, max(self.size_increment, rounded)))


def resize_batch(images: torch.Tensor, size: int) -> torch.Tensor:
    """``(B, 3, S, S)`` images resized to ``size`` (antialiased bilinear; pixel values stay 0-255)."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    return F.interpolate(images.float(), size=(size, size), mode="bilinear", antialias=True)

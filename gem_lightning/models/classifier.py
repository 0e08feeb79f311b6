"""A network together with its input normalisation: raw 0-255 images in, logits or probabilities out."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

TTA = Literal["none", "hflip", "dihedral"]


class ImageClassifier(nn.Module):
    """Wraps a network so it takes ``(B, 3, S, S)`` RGB images, 0-255, uint8 or float.

    Normalising on the device lets batches cross to an accelerator as uint8 (a quarter of the
    bytes), and makes the exported model self-contained.

    Args:
        network: maps normalised float images to logits.
        mean: per-channel mean of images scaled to [0, 1].
        std: per-channel standard deviation of images scaled to [0, 1].
        channels_last: feed the network channels-last tensors (and store its weights so).
        tta: ``hflip`` averages the probabilities of each image and its mirror image; ``dihedral``
            of its 8 quarter turns and mirrors (for subjects with no "up").
        temperature: divides the log of the (averaged) probabilities before the final softmax:
            temperature scaling, fitted on held-out photos by ``calibrate``; 1 leaves them as they are.
        multilabel: each class's probability on its own (sigmoid) instead of one class among all (softmax).
    """

    def __init__(
        self,
        network: nn.Module,
        mean: tuple[float, float, float],
        std: tuple[float, float, float],
        *,
        channels_last: bool = True,
        tta: TTA = "none",
        temperature: float = 1.0,
        multilabel: bool = False,
    ) -> None:
        super().__init__()
        self.network = network.to(memory_format=torch.channels_last) if channels_last else network
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1) * 255, persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1) * 255, persistent=False)
        self.channels_last = channels_last
        self.tta = tta
        self.temperature = temperature
        self.multilabel = multilabel

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        images = (images.float() - self.mean) / self.std
        return images.contiguous(memory_format=torch.channels_last) if self.channels_last else images

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits, ``(B, num_classes)``."""
        return self.network(self.normalize(images))

    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """Calibrated class probabilities in float32, with the test-time augmentation if any."""
        views = tta_views(images, self.tta)
        return self.calibrated(torch.stack([self.activate(self(view)) for view in views]).mean(0))

    def activate(self, logits: torch.Tensor) -> torch.Tensor:
        """Logits -> float32 probabilities: a sigmoid per class (multi-label), else a softmax over them."""
        return logits.float().sigmoid() if self.multilabel else logits.float().softmax(dim=-1)

    def calibrated(self, probs: torch.Tensor) -> torch.Tensor:
        """``probs`` with the temperature applied, ``softmax(log(probs) / T)`` (multi-label: ``sigmoid(logit(p) / T)``
        per class); unchanged at T = 1."""
        if self.temperature == 1.0:
            return probs
        if self.multilabel:
            return (torch.logit(probs.clamp(1e-7, 1 - 1e-7)) / self.temperature).sigmoid()
        return (probs.clamp_min(1e-12).log() / self.temperature).softmax(dim=-1)


def tta_views(images: torch.Tensor, tta: TTA) -> list[torch.Tensor]:
    """The views of ``(B, 3, S, S)`` images whose probabilities test-time augmentation averages."""
    views = [images] if tta == "none" else [images, images.flip(-1)]
    if tta == "dihedral":
        views = [view.rot90(k, dims=(-2, -1)) for view in views for k in range(4)]
    return views

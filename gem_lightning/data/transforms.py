"""Image transforms on uint8 tensors: the seed's augmentation and the evaluation resize.

Everything here maps a ``(3, H, W)`` uint8 image from the decoded-image cache to a
``(3, image_size, image_size)`` uint8 image; conversion to float and normalisation happen in the
model, on the device, so batches cross to an accelerator at a quarter of the bytes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torchvision.transforms import v2

CACHE_MARGIN = 1.15
"""Images are cached this much larger than ``image_size`` so zoom and crops keep their detail."""


def cache_size_for(image_size: int) -> int:
    return int(math.ceil(image_size * CACHE_MARGIN))


@dataclass(frozen=True)
class Augmentation:
    """Training augmentation; the defaults are the seed notebook's ``ImageDataGenerator`` settings.

    Args:
        rotation: maximum rotation in degrees (either way).
        zoom: scale range ``1 +- zoom``.
        shift: maximum horizontal and vertical shift, as a fraction of the image side.
        shear: maximum shear angle in degrees (Keras' ``shear_range`` is in degrees).
        hflip: flip left-right with probability 0.5.
        vflip: flip top-bottom with probability 0.5 (a gem photo has no "up").
        crop_scale: if set, a random-resized crop covering this range of the image area replaces
            the affine zoom and shift (e.g. ``[0.35, 1.0]``).
        brightness: brightness jitter factor range ``1 +- brightness``.
        contrast: contrast jitter, as brightness.
        saturation: saturation jitter, as brightness.
        hue: hue jitter in [0, 0.5]; off by default because colour is what tells many gems apart.
        fill: colour of the areas the affine warp uncovers.
    """

    rotation: float = 25.0
    zoom: float = 0.1
    shift: float = 0.1
    shear: float = 0.2
    hflip: bool = True
    vflip: bool = False
    crop_scale: tuple[float, float] | None = None
    brightness: float = 0.0
    contrast: float = 0.0
    saturation: float = 0.0
    hue: float = 0.0
    fill: tuple[int, int, int] = (255, 255, 255)


class FilledAffine(torch.nn.Module):
    """``v2.RandomAffine`` whose uncovered areas take ``fill`` with clean, antialiased edges.

    torchvision's own bilinear fill darkens a seam along the warped border (a white image with
    white fill comes out with 191s on its edges), a cue that only training images would carry.
    Warping the image with an opaque alpha channel and compositing onto ``fill`` avoids it.
    """

    def __init__(self, fill: tuple[int, int, int], **affine: object) -> None:
        super().__init__()
        self.affine = v2.RandomAffine(interpolation=v2.InterpolationMode.BILINEAR, **affine)
        self.register_buffer("fill", torch.tensor(fill, dtype=torch.float32).view(3, 1, 1), persistent=False)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        alpha = torch.full_like(image[:1], 255)
        warped = self.affine(torch.cat([image, alpha])).float()  # outside the image: all zeros
        rgb, coverage = warped[:3], warped[3:] / 255
        return (rgb + (1 - coverage) * self.fill).round_().clamp_(0, 255).to(image.dtype)


def train_transform(image_size: int, augment: Augmentation) -> v2.Compose:
    """The training pipeline: geometric warp, resize to ``image_size``, flips, colour jitter."""
    steps: list = []
    if augment.crop_scale is not None:
        steps.append(v2.RandomResizedCrop(image_size, scale=tuple(augment.crop_scale), antialias=True))
    if augment.rotation or augment.shear or (augment.crop_scale is None and (augment.zoom or augment.shift)):
        zoom = augment.zoom if augment.crop_scale is None else 0.0
        shift = augment.shift if augment.crop_scale is None else 0.0
        steps.append(
            FilledAffine(
                augment.fill,
                degrees=augment.rotation,
                translate=(shift, shift) if shift else None,
                scale=(1 - zoom, 1 + zoom) if zoom else None,
                shear=augment.shear or None,
            )
        )
    if augment.crop_scale is None:
        steps.append(v2.Resize((image_size, image_size), antialias=True))
    if augment.hflip:
        steps.append(v2.RandomHorizontalFlip())
    if augment.vflip:
        steps.append(v2.RandomVerticalFlip())
    if augment.brightness or augment.contrast or augment.saturation or augment.hue:
        steps.append(v2.ColorJitter(augment.brightness, augment.contrast, augment.saturation, augment.hue))
    return v2.Compose(steps)


def eval_transform(image_size: int) -> v2.Compose:
    """The evaluation pipeline: the whole image, resized to ``image_size`` (as the seed did)."""
    return v2.Compose([v2.Resize((image_size, image_size), antialias=True)])

"""Image transforms on uint8 tensors: training augmentation in the loader, the evaluation resize.

Everything here maps a ``(3, H, W)`` uint8 image from the decoded-image cache to a
``(3, image_size, image_size)`` uint8 image; conversion to float and normalisation happen in the
model, on the device, so batches cross to an accelerator at a quarter of the bytes.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import torch
from torchvision.transforms import v2

from gem_lightning.data.augmentation import Augmentation
from gem_lightning.data.geometry import pixel_map, sample_crop_boxes, sample_theta
from gem_lightning.data.policies import policy_transforms

cv2.setNumThreads(1)  # one thread per DataLoader worker, as torch does in its workers

CACHE_MARGIN = 1.15
"""Images are cached this much larger than ``image_size`` so zoom and crops keep their detail."""


def cache_size_for(image_size: int) -> int:
    return int(math.ceil(image_size * CACHE_MARGIN))


class TrainAugment(torch.nn.Module):
    """The loader's training augmentation of ``(3, H, W)`` uint8 images: geometry with OpenCV, then
    colour jitter (torchvision's ``ColorJitter``), then the augmentation policy and random erasing
    (:mod:`~gem_lightning.data.policies`: photometric, so each image is still resampled once).

    Zoom, shift, rotation, shear, the resize to ``image_size`` and the flips are one bilinear
    resample (``cv2.warpAffine``); a random-resized crop is resized first (antialiased when it
    shrinks), as torchvision orders them. The parameters are torchvision's draws
    (:mod:`~gem_lightning.data.geometry`). Uncovered areas blend into ``fill`` by bilinear coverage,
    so no dark seam marks the border. Several times faster than torchvision's tensor ops on a CPU.
    :meth:`many` augments a whole batch and draws its parameters in one go (the training dataset
    hands it each batch): at small sizes the draws would otherwise cost as much as the warps.
    """

    def __init__(self, augment: Augmentation, image_size: int) -> None:
        super().__init__()
        self.augment = augment
        self.image_size = image_size
        colour = (augment.brightness, augment.contrast, augment.saturation, augment.hue)
        self.jitter = v2.ColorJitter(*colour) if any(colour) else None
        after = policy_transforms(augment)
        self.policy = v2.Compose(after) if after else None

    def extra_repr(self) -> str:
        return f"image_size={self.image_size}"

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.many([image])[0]

    def many(self, images: list[torch.Tensor]) -> list[torch.Tensor]:
        """Augment each image with its own random parameters."""
        if len({image.shape for image in images}) > 1:
            return [self.many([image])[0] for image in images]
        a, size, n = self.augment, self.image_size, len(images)
        height, width = images[0].shape[1:]
        frame = (size, size) if a.crop_scale is not None else (height, width)
        matrices = pixel_map(sample_theta(a, n, frame).double(), frame, size).numpy()
        boxes = sample_crop_boxes(a, n, height, width).int().tolist() if a.crop_scale is not None else [None] * n
        augmented = [self._warp(image, matrix, box) for image, matrix, box in zip(images, matrices, boxes)]
        for step in (self.jitter, self.policy):
            if step is not None:
                augmented = [step(image) for image in augmented]  # each image its own draws
        return augmented

    def _warp(self, image: torch.Tensor, matrix: np.ndarray, box: list[int] | None) -> torch.Tensor:
        size = self.image_size
        pixels = np.ascontiguousarray(image.permute(1, 2, 0).numpy())  # (H, W, 3): a view for cached images
        if box is not None:
            top, left, h, w = box
            shrink = cv2.INTER_AREA if h > size or w > size else cv2.INTER_LINEAR
            pixels = cv2.resize(pixels[top : top + h, left : left + w], (size, size), interpolation=shrink)
        warped = cv2.warpAffine(
            pixels,
            matrix,
            (size, size),
            flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=self.augment.fill,
        )
        return torch.from_numpy(warped).permute(2, 0, 1)


def train_transform(image_size: int, augment: Augmentation) -> TrainAugment:
    """The training pipeline in the loader (see :class:`TrainAugment`)."""
    return TrainAugment(augment, image_size)


def torchvision_transform(image_size: int, augment: Augmentation) -> v2.Compose:
    """The same augmentation with torchvision's own ops, as a plain pipeline would write it.

    The reference :func:`train_transform` and the device path are tested against, and the baseline
    of ``benchmarks/data_pipeline.py``; not used for training (slower, and its bilinear fill leaves
    a dark seam along the warped border).
    """
    steps: list = []
    if augment.crop_scale is not None:
        steps.append(v2.RandomResizedCrop(image_size, scale=tuple(augment.crop_scale), antialias=True))
    if augment.rotate90:
        steps.append(v2.RandomChoice([v2.RandomRotation((angle, angle)) for angle in (0, 90, 180, 270)]))
    if augment.rotation or augment.shear or (augment.crop_scale is None and (augment.zoom or augment.shift)):
        zoom = augment.zoom if augment.crop_scale is None else 0.0
        shift = augment.shift if augment.crop_scale is None else 0.0
        steps.append(
            v2.RandomAffine(
                degrees=augment.rotation,
                translate=(shift, shift) if shift else None,
                scale=(1 - zoom, 1 + zoom) if zoom else None,
                shear=augment.shear or None,
                interpolation=v2.InterpolationMode.BILINEAR,
                fill=list(augment.fill),
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
    return v2.Compose(steps + policy_transforms(augment))


def eval_transform(image_size: int) -> v2.Compose:
    """The evaluation pipeline: the whole image, resized to ``image_size`` (as the seed did)."""
    return v2.Compose([v2.Resize((image_size, image_size), antialias=True)])

"""The standard augmentation policies and random erasing (``data.augment.policy``, ``data.augment.erasing``),
torchvision's v2 transforms on the loader's uint8 images, after its one warp.

RandAugment, TrivialAugmentWide, AutoAugment (its ImageNet policy) and AugMix keep only their
photometric operations (colour, brightness, contrast, sharpness, posterize, solarize, equalize,
autocontrast, ...): the warp before them already draws rotation, shear and shift, and their own
geometric operations would resample each image a second time and fill its corners
(:mod:`gem_lightning.compat.torchvision`). Random erasing then blanks a rectangle with the warp's
``fill`` colour. Every draw comes from torch's random generator, so a seed reproduces them.
"""

from __future__ import annotations

from torchvision.transforms import v2

from gem_lightning.compat.torchvision import (
    PhotometricAugMix,
    PhotometricAutoAugment,
    PhotometricRandAugment,
    PhotometricTrivialAugmentWide,
)
from gem_lightning.data.augmentation import Augmentation


def policy_transforms(augment: Augmentation) -> list[v2.Transform]:
    """The policy and the erasing that ``augment`` asks for, in the order they run (none: an empty list)."""
    steps: list[v2.Transform] = []
    if augment.policy == "randaugment":
        steps.append(PhotometricRandAugment(num_ops=augment.randaugment_ops, magnitude=augment.randaugment_magnitude))
    elif augment.policy == "trivialaugment":
        steps.append(PhotometricTrivialAugmentWide())
    elif augment.policy == "autoaugment":
        steps.append(PhotometricAutoAugment(v2.AutoAugmentPolicy.IMAGENET))
    elif augment.policy == "augmix":
        steps.append(PhotometricAugMix(severity=augment.augmix_severity))
    if augment.erasing:
        steps.append(v2.RandomErasing(p=augment.erasing, value=list(augment.fill)))
    return steps


def describe_policy(augment: Augmentation) -> str:
    """The policy and the erasing in a few words, e.g. ``randaugment (2 ops, magnitude 9), erasing 0.25``; empty without either."""
    details = {
        "randaugment": f" ({augment.randaugment_ops} ops, magnitude {augment.randaugment_magnitude})",
        "augmix": f" (severity {augment.augmix_severity})",
    }
    parts = [augment.policy + details.get(augment.policy, "")] if augment.policy != "none" else []
    if augment.erasing:
        parts.append(f"erasing {augment.erasing:g}")
    return ", ".join(parts)

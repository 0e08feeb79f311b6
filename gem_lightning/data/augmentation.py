"""The training augmentation settings, shared by the loader's and the device's augmentation.

Only settings live here, so that :mod:`~gem_lightning.data.geometry` (the random draws) and
:mod:`~gem_lightning.data.transforms` (the loader's warps) can both import them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

Policy = Literal["none", "randaugment", "trivialaugment", "autoaugment", "augmix"]


@dataclass(frozen=True)
class Augmentation:
    """Training augmentation; the defaults are the seed notebook's ``ImageDataGenerator`` settings.

    Args:
        rotation: maximum rotation in degrees (either way).
        rotate90: also turn by a random multiple of 90 degrees (exact on a square crop: no corners
            to fill; for subjects with no "up", such as gems).
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
        fill: colour of the areas the affine warp uncovers (and of erased rectangles).
        policy: a standard augmentation policy after the warp, with its photometric operations only
            (the warp draws the geometry; ``gem_lightning.data.policies``): ``randaugment``,
            ``trivialaugment`` (TrivialAugmentWide), ``autoaugment`` (the ImageNet policy), ``augmix``.
        randaugment_ops: operations RandAugment applies to each image.
        randaugment_magnitude: their strength, 0 to 30 (RandAugment's 31 levels).
        augmix_severity: strength of AugMix's operations, 1 to 10.
        erasing: probability that random erasing blanks a rectangle of each image (after the policy).
    """

    rotation: float = 25.0
    rotate90: bool = False
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
    policy: Policy = "none"
    randaugment_ops: int = 2
    randaugment_magnitude: int = 9
    augmix_severity: int = 3
    erasing: float = 0.0

    def problems(self) -> list[str]:
        """The policy settings that cannot work, each naming its setting."""
        checks = [
            (self.policy in get_args(Policy), f"data.augment.policy must be one of {', '.join(get_args(Policy))}, got {self.policy!r}"),
            (self.randaugment_ops >= 0, f"data.augment.randaugment_ops must be at least 0, got {self.randaugment_ops}"),
            (
                0 <= self.randaugment_magnitude <= 30,
                f"data.augment.randaugment_magnitude must be 0 to 30, got {self.randaugment_magnitude}",
            ),
            (1 <= self.augmix_severity <= 10, f"data.augment.augmix_severity must be 1 to 10, got {self.augmix_severity}"),
            (0.0 <= self.erasing <= 1.0, f"data.augment.erasing is a probability (0 to 1), got {self.erasing}"),
        ]
        return [problem for ok, problem in checks if not ok]

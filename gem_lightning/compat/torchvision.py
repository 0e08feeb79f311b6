"""Every private torchvision name gem-lightning relies on, in one place, so that an upgrade shows what broke.

The augmentation policies (``data.augment.policy``) run after the loader's one warp, which already
draws the rotation, shear and shift: their own geometric operations (``ShearX``/``Y``,
``TranslateX``/``Y``, ``Rotate``) would resample each image a second time. torchvision has no public
way to leave operations out of a policy; its policies draw them from a class-level table
(``_AUGMENTATION_SPACE``: RandAugment, TrivialAugmentWide, AugMix) or a list of sub-policies
(``AutoAugment._get_policies``), so the photometric policies below are subclasses that override
those, and everything else (the draws, the operations, their magnitudes) stays torchvision's.
Private names change without deprecation, so:

* this module is the only one that reads or overrides them; the rest of the package uses the classes below;
* :data:`PRIVATE_NAMES` lists every private torchvision name they read or override, and
  :data:`PARAMETERS` the parameters the overridden method takes.

``tests/test_compat.py`` checks that each listed name exists in the installed torchvision with those
parameters, and that no other module touches a private torchvision name. ``pyproject.toml`` pins
``torchvision<0.30``: before lifting the pin, re-read each listed name in the new release's source and
check that it still means what the comment beside it says.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torchvision.transforms.v2 import AugMix, AutoAugment, RandAugment, TrivialAugmentWide

GEOMETRIC_OPS = frozenset({"ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate"})
"""The policies' operations that move pixels (a resample, and corners to fill)."""

PRIVATE_NAMES: tuple[str, ...] = (
    # op name -> (magnitudes(num_bins, height, width), signed): the table each policy's forward draws
    # its operations from through self._AUGMENTATION_SPACE (AugMix: when all_ops, its default).
    "torchvision.transforms.v2.RandAugment._AUGMENTATION_SPACE",
    "torchvision.transforms.v2.TrivialAugmentWide._AUGMENTATION_SPACE",
    "torchvision.transforms.v2.AugMix._AUGMENTATION_SPACE",
    # (policy) -> the list of sub-policies ((op name, probability, magnitude index), ...) that
    # AutoAugment.__init__ stores and forward draws from; every op name a key of _AUGMENTATION_SPACE.
    "torchvision.transforms.v2.AutoAugment._get_policies",
)

PARAMETERS: dict[str, tuple[str, ...]] = {
    "torchvision.transforms.v2.AutoAugment._get_policies": ("policy",),
}
"""The parameters, in order and without ``self``, that the package's override of the listed method takes."""

Space = dict[str, tuple[Callable[..., Any], bool]]


def _photometric(space: Space) -> Space:
    return {name: entry for name, entry in space.items() if name not in GEOMETRIC_OPS}


class PhotometricRandAugment(RandAugment):
    """torchvision's RandAugment drawing from its operations that do not move pixels."""

    _AUGMENTATION_SPACE = _photometric(RandAugment._AUGMENTATION_SPACE)


class PhotometricTrivialAugmentWide(TrivialAugmentWide):
    """torchvision's TrivialAugmentWide drawing from its operations that do not move pixels."""

    _AUGMENTATION_SPACE = _photometric(TrivialAugmentWide._AUGMENTATION_SPACE)


class PhotometricAugMix(AugMix):
    """torchvision's AugMix (all operations) chaining only those that do not move pixels."""

    _AUGMENTATION_SPACE = _photometric(AugMix._AUGMENTATION_SPACE)


class PhotometricAutoAugment(AutoAugment):
    """torchvision's AutoAugment policy with its geometric steps left out of each sub-policy (a
    sub-policy left empty keeps the image as it is, as a step that does not fire does)."""

    def _get_policies(self, policy: Any) -> list[tuple]:
        return [tuple(step for step in sub_policy if step[0] not in GEOMETRIC_OPS) for sub_policy in super()._get_policies(policy)]

"""A photo (its path or its bytes) as the ``(3, S, S)`` uint8 tensor a checkpoint's network takes.

One code path for every way of predicting: ``predict`` (its dataset calls the same
``DecodeSettings.decode`` and ``eval_transform``), :class:`~gem_lightning.inference.api.GemModel`
and ``serve`` (which decodes uploads in its HTTP processes with this class, without loading the
model). The checkpoint's hyperparameters say how: image size, auto-crop, background colour.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from gem_lightning.data.cache import DecodeSettings
from gem_lightning.data.images import ImageSource
from gem_lightning.data.transforms import cache_size_for, eval_transform


class Preprocessing:
    """Decodes a photo as training decoded it (squeezed to the cache size), then the evaluation resize.

    Args:
        image_size: the network's input side ``S``.
        autocrop: crop to the gem first (the seed's crop), as the checkpoint was trained.
        background: the colour transparent areas become.
    """

    def __init__(self, image_size: int, autocrop: bool = False, background: tuple[int, int, int] = (255, 255, 255)) -> None:
        self.image_size = image_size
        self.settings = DecodeSettings(cache_size_for(image_size), autocrop=autocrop, background=tuple(background))
        self.transform = eval_transform(image_size)

    @classmethod
    def from_hparams(cls, hparams: Mapping[str, Any]) -> Preprocessing:
        """The preprocessing a checkpoint's hyperparameters (``image_size``, ``preprocessing``) describe."""
        preprocessing = hparams.get("preprocessing") or {}
        return cls(
            int(hparams["image_size"]),
            autocrop=bool(preprocessing.get("autocrop", False)),
            background=tuple(preprocessing.get("background", (255, 255, 255))),
        )

    def __call__(self, source: ImageSource) -> torch.Tensor:
        """The ``(3, S, S)`` uint8 image of ``source`` (a path, or the file's bytes).

        Raises:
            BadImageError: the file cannot be read as an image (the reason is in the message).
        """
        image = torch.from_numpy(self.settings.decode(source)).permute(2, 0, 1)
        return self.transform(image)

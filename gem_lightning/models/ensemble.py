"""Several trained networks as one: their class probabilities averaged.

An ensemble is a network spec like any other (:class:`EnsembleSpec`), so an ensemble checkpoint
(``python main.py ensemble``) is tested, predicted, served, exported and loaded from Python as one
model. Each member keeps its own normalisation and calibration temperature; the ensemble's input
is the raw 0-255 image (``ENSEMBLE_MEAN``/``ENSEMBLE_STD`` leave it as it is).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from gem_lightning.errors import UserInputError
from gem_lightning.models.classifier import ImageClassifier
from gem_lightning.models.spec import NetworkSpec, Normalization, spec_from_config

ENSEMBLE_MEAN = (0.0, 0.0, 0.0)
ENSEMBLE_STD = (1 / 255, 1 / 255, 1 / 255)
"""The module's normalisation of an ensemble: none, each member normalises the raw image itself."""


@dataclass(frozen=True)
class EnsembleSpec(NetworkSpec):
    """Members' networks whose (calibrated) probabilities are averaged.

    Args:
        members: one dict per member: ``network`` (its spec's ``to_config()``), ``mean``, ``std`` and
            ``temperature`` as its checkpoint stored them.
    """

    members: tuple[dict[str, Any], ...] = ()

    def __post_init__(self) -> None:
        if len(self.members) < 2:
            raise UserInputError(f"model.network: an ensemble needs at least two members, got {len(self.members)}.")
        object.__setattr__(self, "members", tuple(dict(member) for member in self.members))

    def build(self, num_classes: int, image_size: int) -> nn.Module:
        return EnsembleNetwork(
            [
                ImageClassifier(
                    spec_from_config(member["network"]).build(num_classes, image_size),
                    tuple(member["mean"]),
                    tuple(member["std"]),
                    temperature=member.get("temperature", 1.0),
                )
                for member in self.members
            ]
        )

    def normalization(self) -> Normalization:
        return Normalization(ENSEMBLE_MEAN, ENSEMBLE_STD)

    def classifier(self, network: nn.Module) -> nn.Module:
        raise UserInputError(
            "model.network: an ensemble is made of trained checkpoints (`python main.py ensemble`); it is not trained itself."
        )


class EnsembleNetwork(nn.Module):
    """Raw ``(B, 3, S, S)`` images -> the log of the members' mean probabilities, ``(B, C)``.

    Their softmax is the mean probability, so the ensemble's logits behave as any network's
    (softmax, top-k, temperature, test-time augmentation, export).
    """

    def __init__(self, members: list[ImageClassifier]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        probs = torch.stack([member.calibrated(member(images).float().softmax(dim=-1)) for member in self.members]).mean(0)
        return probs.clamp_min(1e-12).log()

"""Checks of the module's settings that refuse, in one line naming the setting, what cannot work."""

from __future__ import annotations

import math
from typing import Any

from gem_lightning.errors import UserInputError
from gem_lightning.models import NetworkSpec


def check_progressive_resizing(network: NetworkSpec, total_steps: float) -> None:
    """Progressive resizing needs a network that takes smaller images and a run of known length."""
    fixed = network.input_size_fixed()
    if fixed:
        raise UserInputError(f"data.progressive_resizing trains on smaller images, but model.network cannot take them: {fixed}.")
    if math.isinf(total_steps) or total_steps < 1:  # inf: no max_epochs nor max_steps; -1: a stream of unknown length without max_steps
        raise UserInputError(
            "data.progressive_resizing grows the images over the whole run, whose length is unknown: "
            "set trainer.max_steps (or trainer.max_epochs for a folder)."
        )


def check_multilabel_settings(**settings: Any) -> None:
    """Settings that need one class per image, refused for a multi-label model in one line."""
    on = [name for name, value in settings.items() if value not in (None, 0, 0.0, "none")]
    if on:
        raise UserInputError(
            f"model.{', model.'.join(on)}: for single-label data (one class a photo); the data has several labels a "
            "photo (a labels file), so the model is multi-label: leave them unset."
        )


def check_training_settings(
    *, top_k: int, label_smoothing: float, mixup_alpha: float, cutmix_alpha: float, backbone_lr_ratio: float, temperature: float
) -> None:
    """Refuse values that cannot work, naming the setting, before anything is built."""
    problems = []
    if not 0.0 < backbone_lr_ratio <= 1.0:
        problems.append(f"model.backbone_lr_ratio must be above 0 and at most 1, got {backbone_lr_ratio}")
    if not temperature > 0:
        problems.append(f"model.temperature must be above 0, got {temperature}")
    if top_k < 1:
        problems.append(f"model.top_k must be at least 1, got {top_k}")
    if not 0.0 <= label_smoothing < 1.0:
        problems.append(f"model.label_smoothing must be at least 0 and below 1, got {label_smoothing}")
    for name, alpha in (("mixup_alpha", mixup_alpha), ("cutmix_alpha", cutmix_alpha)):
        if alpha < 0:
            problems.append(f"model.{name} must be 0 (off) or more, got {alpha}")
    if problems:
        raise UserInputError("; ".join(problems) + ".")

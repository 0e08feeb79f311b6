"""What ``calibrate`` measures on a set of photos: each one's probabilities and label, and, where the
"unknown" scores need them, the penultimate features and logits of the same forward pass."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from typing_extensions import override

from gem_lightning.errors import UserInputError
from gem_lightning.models.features import PenultimateTap, view_count


@dataclass
class Measured:
    """Photos as the model saw them: ``(N, C)`` probabilities, ``(N,)`` labels, and ``(N, d)`` features
    and ``(N, C)`` logits (None where the network has no head of its own: an ensemble)."""

    probs: torch.Tensor
    targets: torch.Tensor
    features: torch.Tensor | None = None
    logits: torch.Tensor | None = None


class Measure(Callback):
    """Keeps what each validation batch's photos gave (``validation_step``'s ``probs`` and ``targets``), with
    the features and logits of the same pass (the classifier head's input and output)."""

    def __init__(self) -> None:
        self.tap: PenultimateTap | None = None
        self.kept: list[tuple[torch.Tensor, ...]] = []

    @override
    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.kept = []
        try:
            self.tap = PenultimateTap(pl_module.network_spec, pl_module.model.network)
        except UserInputError:  # an ensemble: its members' heads, none of its own
            self.tap = None

    @override
    def on_validation_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        kept = (outputs["probs"].detach().float().cpu(), outputs["targets"].detach().cpu())
        if self.tap is not None:
            kept += tuple(t.cpu() for t in self.tap.take(view_count(pl_module.model.tta)))
        self.kept.append(kept)

    @override
    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.tap is not None:
            self.tap.close()

    def collected(self) -> Measured:
        columns = [torch.cat(column) for column in zip(*self.kept)]
        return Measured(*columns)

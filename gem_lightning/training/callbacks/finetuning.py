"""Fine-tuning a pretrained backbone: train the new classifier head alone first, then everything."""

from __future__ import annotations

from lightning.pytorch import Callback, LightningModule, Trainer
from torch import nn
from typing_extensions import override

from gem_lightning.models.spec import classifier_head

BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.LazyBatchNorm1d, nn.LazyBatchNorm2d, nn.LazyBatchNorm3d)
"""torch's batch-norm layers, and so every subclass (timm's ``BatchNormAct2d``...): the public classes
under torch's private ``_BatchNorm``."""


class FreezeBackbone(Callback):
    """Freezes the backbone (everything but the classifier head) for the first ``epochs`` epochs.

    A fresh head trained against a moving backbone drags pretrained features around with random
    gradients; a few head-only epochs first avoid that and cost a fraction of a full epoch. While
    frozen, the backbone's batch-norm layers run in eval mode, so their pretrained statistics are
    neither updated nor replaced by batch statistics. The state follows ``trainer.current_epoch``,
    so a resumed run freezes exactly as an uninterrupted one.

    Parameters the model keeps frozen itself (``model.network.frozen_stages``) stay frozen afterwards.
    Under DDP the backbone keeps ``requires_grad`` (DDP fixes the parameters it synchronises when it
    wraps the model) and its gradients are dropped before each optimizer step instead.

    Args:
        epochs: epochs with the backbone frozen (0: never frozen).
        train_bn: let the backbone's batch-norm layers update their statistics while frozen.
    """

    def __init__(self, epochs: int = 1, train_bn: bool = False) -> None:
        if epochs < 0:
            raise ValueError(f"FreezeBackbone epochs must be >= 0, got {epochs}.")
        self.epochs = epochs
        self.train_bn = train_bn
        self._trainable: set[nn.Parameter] = set()

    def frozen(self, trainer: Trainer) -> bool:
        return trainer.current_epoch < self.epochs

    @override
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._trainable = {parameter for parameter in pl_module.parameters() if parameter.requires_grad}

    def _backbone_parameters(self, pl_module: LightningModule) -> list[nn.Parameter]:
        modules = backbone_modules(pl_module.model.network)
        return [p for module in modules for p in module.parameters(recurse=False) if p in self._trainable]

    @override
    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        frozen = self.frozen(trainer)
        if not self.train_bn:
            for module in backbone_modules(pl_module.model.network):
                if isinstance(module, BATCH_NORMS):
                    module.train(not frozen)
        if trainer.world_size == 1:
            for parameter in self._backbone_parameters(pl_module):
                parameter.requires_grad_(not frozen)

    @override
    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer) -> None:
        if self.frozen(trainer) and trainer.world_size > 1:
            for parameter in self._backbone_parameters(pl_module):
                parameter.grad = None


def backbone_modules(network: nn.Module) -> list[nn.Module]:
    """Every module of ``network`` outside its classifier head."""
    head = set(classifier_head(network).modules())
    return [module for module in network.modules() if module not in head]

"""Log how long each training epoch takes and how many images per second it trains."""

from __future__ import annotations

import time

from lightning.pytorch import Callback, LightningModule, Trainer
from typing_extensions import override


class EpochTimer(Callback):
    """Logs ``time/train_epoch_s`` and ``time/train_images_per_s`` (all processes together).

    The clock covers the training batches of an epoch, data loading included, not validation.
    """

    def __init__(self) -> None:
        self._start = 0.0
        self._images = 0

    @override
    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._start = time.perf_counter()
        self._images = 0

    @override
    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int) -> None:
        self._images += len(batch[0])

    @override
    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        seconds = time.perf_counter() - self._start
        images = self._images * trainer.world_size
        pl_module.log("time/train_epoch_s", seconds, rank_zero_only=True)
        pl_module.log("time/train_images_per_s", images / max(seconds, 1e-9), rank_zero_only=True)

"""A callback for benchmarks: the wall-clock time of every training step of process 0, written as JSON.

``--trainer.callbacks+=step_clock.StepClock`` with ``benchmarks/`` on ``PYTHONPATH`` and
``STEP_CLOCK_OUT=<file>``; ``benchmarks/stream_startup.py`` reads the file.
"""

from __future__ import annotations

import json
import os
import time

from lightning.pytorch import Callback


class StepClock(Callback):
    def __init__(self) -> None:
        self.starts: list[float] = []
        self.images = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.starts.append(time.time())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.images += len(batch[0])

    def on_train_end(self, trainer, pl_module) -> None:
        if trainer.global_rank == 0:
            out = {"starts": self.starts, "end": time.time(), "images_per_process": self.images, "world_size": trainer.world_size}
            with open(os.environ["STEP_CLOCK_OUT"], "w") as file:
                json.dump(out, file)

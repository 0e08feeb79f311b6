"""``main.py`` that holds still where ``GEM_TEST_PAUSES`` says, so a test can signal a job at a known moment.

``GEM_TEST_PAUSES`` is JSON: ``{"<SLURM restart count>": {"at": "train" | "val" | "checkpoint" |
"after_fit", "epoch": e, "batch": b}}``. At that point (global rank 0; every rank for ``after_fit``)
the process writes ``$GEM_TEST_MARKERS/<restart>-<at>-<rank>.json`` and waits (up to 120 s) until
this process has received the signal the test then sends, and goes on. ``{"at": "slow", "seconds":
s}`` instead makes every training step of that allocation last ``s`` seconds longer until a signal to
stop or requeue arrives (so that it cannot finish before a time limit, yet stops as soon as it is
told). Everything else is ``main.py``.
Used by ``tests/test_slurm.py`` through a ``PYTHON`` wrapper for ``scripts/slurm_fit.sh``.
"""

import json
import os
import sys
import time
from pathlib import Path

from gem_lightning.resilience import signals

signals.listen_for_requeue_signal()

from lightning.pytorch import Callback  # noqa: E402

import gem_lightning.cli.app as cli  # noqa: E402
from gem_lightning.resilience import SaveOnSigterm  # noqa: E402

RESTART = os.environ.get("SLURM_RESTART_COUNT", "0")
PAUSE = json.loads(os.environ.get("GEM_TEST_PAUSES", "{}")).get(RESTART)


def hold(trainer=None, **where) -> None:
    marker = Path(os.environ["GEM_TEST_MARKERS"]) / f"{RESTART}-{PAUSE['at']}-{os.environ.get('SLURM_PROCID', '0')}.json"
    marker.write_text(json.dumps({"pid": os.getpid(), **where}))
    wait_for_signal(trainer, 120)


def wait_for_signal(trainer, seconds: float) -> None:
    """Sleep ``seconds``, or less: until this process has received the signal to stop or requeue."""
    stoppers = [cb for cb in trainer.callbacks if isinstance(cb, SaveOnSigterm)] if trainer else []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if any(cb.requested(trainer) for cb in stoppers) or signals._requeue_requested:
            return
        time.sleep(0.05)


class PauseInFit(Callback):
    def __init__(self) -> None:
        self.done = False

    def _due(self, trainer, at: str, batch_idx: int | None = None) -> bool:
        return (
            not self.done
            and trainer.global_rank == 0
            and PAUSE["at"] == at
            and trainer.current_epoch == PAUSE["epoch"]
            and (batch_idx is None or batch_idx == PAUSE.get("batch", 0))
        )

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self._due(trainer, "train", batch_idx):
            self.done = True
            hold(trainer, epoch=trainer.current_epoch, batch=batch_idx, global_step=trainer.global_step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if PAUSE["at"] == "slow" and trainer.global_rank == 0:
            wait_for_signal(trainer, PAUSE["seconds"])

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        if not trainer.sanity_checking and self._due(trainer, "val", batch_idx):
            self.done = True
            hold(trainer, epoch=trainer.current_epoch, batch=batch_idx, global_step=trainer.global_step)

    def setup(self, trainer, pl_module, stage):
        if PAUSE["at"] != "checkpoint":
            return
        io = trainer.strategy.checkpoint_io
        save = io.save_checkpoint

        def pausing_save(checkpoint, path, storage_options=None):
            if self._due(trainer, "checkpoint"):
                self.done = True
                hold(trainer, epoch=trainer.current_epoch, global_step=trainer.global_step, path=str(path))
            return save(checkpoint, path, storage_options)

        io.save_checkpoint = pausing_save


_instantiate_trainer = cli.GemCLI.instantiate_trainer


def instantiate_trainer(self, **kwargs):
    trainer = _instantiate_trainer(self, **kwargs)
    if PAUSE and PAUSE["at"] != "after_fit":
        trainer.callbacks.insert(0, PauseInFit())
    return trainer


cli.GemCLI.instantiate_trainer = instantiate_trainer

if __name__ == "__main__":
    status = cli.main()
    if PAUSE and PAUSE["at"] == "after_fit":
        hold()
    sys.exit(status)

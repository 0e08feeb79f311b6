"""``last.ckpt`` that is really the latest state: :class:`ResumableModelCheckpoint`.

``--ckpt_path last`` resumes from ``last.ckpt``; if that file stays at an older epoch, the resumed
run replays epochs that were already done. Lightning 2.6 lets that happen whenever a monitored
metric stops improving, so ``GemCLI`` uses this class for its ``checkpoint`` options.
"""

from __future__ import annotations

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from typing_extensions import override


class ResumableModelCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` with the pre-2.6 meaning of ``save_last=True``: at every epoch checkpoint
    (``every_n_epochs``, after validation or at the train epoch end), ``last.ckpt`` holds the
    latest state, whether or not the monitored metric improved.

    Lightning 2.6 writes ``last.ckpt`` at epoch ends only when a top-k file was written at the same
    step (see Lightning-AI/pytorch-lightning's 2.6.0 ``ModelCheckpoint``: "Only save last checkpoint
    if a checkpoint was actually saved in this step"). Step-based saves
    (``every_n_train_steps``) are unchanged. Same arguments as ``ModelCheckpoint``; its checkpoint
    state uses ``ModelCheckpoint``'s key, so checkpoints written with either class resume with the other.
    It relies on ``ModelCheckpoint`` internals of Lightning 2.6 (listed in
    :mod:`gem_lightning.compat.lightning`; ``pyproject.toml`` pins ``<2.7``); ``tests/test_resume.py``
    checks the behaviour.
    """

    @property
    @override
    def state_key(self) -> str:
        key = super().state_key
        own = type(self).__qualname__
        return "ModelCheckpoint" + key[len(own) :] if key.startswith(own) else key

    @override
    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._refresh_last(trainer)

    @override
    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._refresh_last(trainer)

    def _refresh_last(self, trainer: Trainer) -> None:
        if self.save_last is not True or self._should_skip_saving_checkpoint(trainer):
            return  # not fitting, sanity check, or something (top-k and last) was saved at this step
        if self._every_n_epochs < 1 or (trainer.current_epoch + 1) % self._every_n_epochs != 0:
            return
        self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

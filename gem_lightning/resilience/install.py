"""``make_resumable(trainer)``: put every piece of run resilience on a trainer, once.

``GemCLI`` calls it on the trainer it builds; a script that builds its own ``Trainer`` calls it too.
"""

from __future__ import annotations

from lightning.pytorch import Callback, Trainer
from lightning.pytorch.callbacks import Checkpoint, ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_warn

from gem_lightning.compat.lightning import replace_default_signal_connector
from gem_lightning.resilience.atomic_checkpoint import AtomicCheckpointIO
from gem_lightning.resilience.last_checkpoint import ResumableModelCheckpoint
from gem_lightning.resilience.preemption import SaveOnSigterm
from gem_lightning.resilience.rng_state import RNGState
from gem_lightning.resilience.signal_connector import OwnProcessSignalConnector


def make_resumable(trainer: Trainer) -> Trainer:
    """Install atomic checkpoint writes, :class:`RNGState`, :class:`SaveOnSigterm` and
    :class:`OwnProcessSignalConnector` on ``trainer``.

    Idempotent: callbacks already present (of these classes) are kept, and a strategy with its own
    checkpoint IO (DeepSpeed, FSDP, XLA, a user's plugin) keeps it; only the default
    ``TorchCheckpointIO`` is replaced. Callbacks go before the checkpoint callbacks, as Lightning
    orders them. Returns ``trainer``.
    """
    if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
        trainer.strategy.checkpoint_io = AtomicCheckpointIO()
    replace_default_signal_connector(trainer, OwnProcessSignalConnector)
    for callback_class in (RNGState, SaveOnSigterm):
        _add_callback_once(trainer, callback_class)
    _warn_if_last_checkpoint_lags(trainer)
    return trainer


def _add_callback_once(trainer: Trainer, callback_class: type[Callback]) -> None:
    """A ``callback_class()`` before the first checkpoint callback, unless the trainer has one already."""
    callbacks = trainer.callbacks
    if any(isinstance(callback, callback_class) for callback in callbacks):
        return
    position = next((i for i, callback in enumerate(callbacks) if isinstance(callback, Checkpoint)), len(callbacks))
    callbacks.insert(position, callback_class())


def _warn_if_last_checkpoint_lags(trainer: Trainer) -> None:
    """Warn about a plain ``ModelCheckpoint`` whose ``last.ckpt`` would stay at the best epoch."""
    callbacks = trainer.callbacks
    if any(isinstance(callback, ResumableModelCheckpoint) for callback in callbacks):
        return
    if any(type(callback) is ModelCheckpoint and callback.save_last is True and callback.monitor for callback in callbacks):
        rank_zero_warn(
            "ModelCheckpoint(save_last=True, monitor=...) in Lightning 2.6 refreshes last.ckpt only when the monitored "
            "metric improves; use gem_lightning.resilience.ResumableModelCheckpoint to resume from the latest epoch."
        )

"""A checkpoint when the job is told to stop: :class:`SaveOnSigterm` (SIGTERM, SLURM's requeue signal, Ctrl-C).

Clusters stop jobs with a signal and a grace period (SLURM's ``scancel``, preemption and time
limit, Kubernetes, torchrun); Lightning 2.6 turns SIGTERM into a clean stop but saves nothing, and
its SLURM handler saves and requeues from inside the signal handler, which breaks DDP. This
callback keeps the work done until then in ``last.ckpt``, which ``--ckpt_path last`` resumes from.
"""

from __future__ import annotations

import os
import signal
from functools import partial
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException
from typing_extensions import override

from gem_lightning.compat.lightning import last_global_step_saved, stop_as_on_sigterm
from gem_lightning.resilience.signals import install_handler, take_requeue_request
from gem_lightning.resilience.slurm_requeue import requeue_signal, requeue_slurm_job


class SaveOnSigterm(Callback):
    """On SIGTERM, save a resumable checkpoint at the current global step, then stop cleanly.

    Lightning 2.6 already turns SIGTERM into a stop: its handler sets ``trainer.received_sigterm``
    (and forwards the signal to the processes its own launcher started), and the loops raise
    ``SIGTERMException`` (a ``SystemExit``: the process exits with status 0) after the current
    training batch or before the next evaluation batch. It saves nothing. This callback saves, at
    the end of the training batch during which the signal arrived, the checkpoint that
    ``--ckpt_path last`` resumes from (a mid-epoch checkpoint: :mod:`gem_lightning.resilience` says
    what that resume reproduces). In a single process, a SIGTERM that arrives during validation stops it
    before its next batch and the checkpoint is saved from ``on_exception``.

    Ctrl-C (SIGINT) during ``fit`` is handled the same way: Lightning would raise
    ``KeyboardInterrupt`` wherever the program happens to be (half-way through an optimizer step,
    say) and save nothing; here the first Ctrl-C asks for the same stop-and-save as SIGTERM, and
    :func:`interrupted_by_ctrl_c` tells the command line to report it (exit status 130). A second
    Ctrl-C raises ``KeyboardInterrupt`` at once, without saving.

    Under DDP, Lightning's handler is not safe: it runs a ``broadcast`` *inside the signal handler*,
    which meets whatever collective the other ranks are in (a DDP gradient all-reduce, say) and
    crashes gloo/NCCL ("Is there a distributed collective mismatch in your code?"). So under DDP this
    callback replaces it, for the training loop, with a handler that only records the request (and,
    on the process that launched the others, forwards the signal to them, as Lightning does). At
    each training batch end the ranks reduce "has any rank been asked to stop" (one tiny all-reduce
    per batch, at the same point on every rank), then all save together and all stop after that
    batch; a signal that reaches only some ranks cannot leave the others waiting in a collective.
    A request that arrives after an epoch's last batch (during validation, or while the epoch
    checkpoint is written) takes effect before the next epoch starts, from the epoch checkpoint
    ``ModelCheckpoint`` just wrote (or one is saved); after the last epoch the run simply ends.

    On SLURM, ``SLURMEnvironment(auto_requeue=True)`` (Lightning's default when SLURM is detected)
    also handles the requeue signal (``#SBATCH --signal=SIGUSR1@90``). Lightning's own handler saves
    ``hpc_ckpt_<n>.ckpt`` and runs ``scontrol requeue`` *inside the signal handler*, barriers and
    collectives included; this callback handles that signal the same way as SIGTERM, in one
    process or several (record, agree at a batch or epoch end, save ``last.ckpt``), and then global
    rank 0 requeues the job as Lightning would. A requeue signal recorded before training started
    (``gem_lightning.resilience.signals.listen_for_requeue_signal``) is acted on after the first batch.

    Every handler runs only in the process that installed it (``gem_lightning.resilience.signals``): loader
    workers started by ``fork`` (``data.loader.multiprocessing_context``) inherit them but never act on them.

    Args:
        filename: name (without ``.ckpt``) of the checkpoint in the ``ModelCheckpoint`` folder;
            default: that callback's last-checkpoint name (``last``), which is what
            ``ckpt_path="last"`` resumes from.
    """

    def __init__(self, filename: str | None = None) -> None:
        super().__init__()
        if filename is not None and not filename:
            raise ValueError("SaveOnSigterm: `filename` must not be empty.")
        self.filename = filename
        self.saved_path: str | None = None
        self._requested = False
        self._requeue = False
        self._stop_at_epoch_end = False
        self._trained = False
        self._forwarded = False

    def requested(self, trainer: Trainer) -> bool:
        """Whether this process has been asked to stop (by Lightning's handler or this callback's)."""
        return self._requested or bool(trainer.received_sigterm)

    @override
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Before the sanity check starts loader workers: forked workers inherit this handler, so a
        # terminal's Ctrl-C (sent to the whole process group) does not kill them mid-epoch either.
        # Lightning's signal connector restores the handlers it found (SIGINT's too) at teardown.
        install_handler(signal.SIGINT, partial(self._record_ctrl_c, trainer))

    @override
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._requested = self._requeue = self._stop_at_epoch_end = self._trained = False
        signum = requeue_signal(trainer)
        if take_requeue_request() and signum is not None:
            rank_zero_info("A requeue signal arrived before training: saving and requeueing after the first batch.")
            self._requested = self._requeue = True
        # Lightning's signal connector restores the handlers it found when the trainer tears down.
        if trainer.world_size > 1:
            install_handler(signal.SIGTERM, partial(self._record, trainer, False))
        if signum is not None:
            install_handler(signum, partial(self._record, trainer, True))

    def _record(self, trainer: Trainer, requeue: bool, signum: int, frame: Any) -> None:
        """Signal handler: only note the request (no collectives, no checkpoint in a signal handler)."""
        rank_zero_info(f"Signal {signum} received: stopping after this training batch or epoch.")
        self._requested = True
        self._requeue = self._requeue or requeue
        launcher = trainer.strategy.launcher
        if not requeue and launcher is not None and not self._forwarded:
            self._forwarded = True
            launcher.kill(signum)  # the processes Lightning's launcher started (none under srun/torchrun)

    def _record_ctrl_c(self, trainer: Trainer, signum: int, frame: Any) -> None:
        """SIGINT during ``fit``: stop as on SIGTERM, saving ``last.ckpt``; a second Ctrl-C stops at once."""
        global _ctrl_c
        if _ctrl_c is not None:
            signal.default_int_handler(signum, frame)  # raises KeyboardInterrupt: Lightning's shutdown, no save
        _ctrl_c = _CtrlC()
        rank_zero_info("\nCtrl-C: saving a resumable checkpoint after this batch (press Ctrl-C again to stop without saving).")
        self._requested = True
        if trainer.world_size == 1:
            stop_as_on_sigterm(trainer)

    @override
    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int) -> None:
        self._trained = True
        if self._agreed_stop(trainer):
            self._stop_after_this_batch(trainer)

    @override
    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """A request that arrived since the last training batch (during validation, the epoch-end hooks
        or the epoch checkpoint's write) stops the run before the next epoch, from that epoch
        checkpoint; after the last epoch the run simply ends. A request from before this process
        trained at all waits for the first batch end, so that every allocation makes progress."""
        if not self._trained or not self._agreed_stop(trainer):
            return
        self._stop_at_epoch_end = True
        self._requeue = self._agreed_requeue(trainer)
        stop_as_on_sigterm(trainer)
        raise SIGTERMException  # on every rank at once: on_exception saves (or adopts) and requeues

    @override
    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, SIGTERMException) or self.saved_path is not None:
            return
        if self._stop_at_epoch_end:  # every rank is here, at the start of an epoch
            if not self._adopt_epoch_checkpoint(trainer):
                self._save(trainer)
            _requeue_from_global_zero(trainer, self._requeue)
        elif trainer.world_size == 1 and trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking:
            self._save(trainer)

    def _agreed_stop(self, trainer: Trainer) -> bool:
        """Whether any rank has been asked to stop (every rank calls this at the same point)."""
        if self.saved_path is not None:
            return False
        stop = self.requested(trainer)
        if trainer.world_size > 1:
            stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
        return stop

    def _agreed_requeue(self, trainer: Trainer) -> bool:
        if trainer.world_size > 1:
            return trainer.strategy.reduce_boolean_decision(self._requeue, all=False)
        return self._requeue

    def _stop_after_this_batch(self, trainer: Trainer) -> None:
        """Stop every rank after this batch (Lightning checks the flag there), save, and requeue if asked."""
        requeue = self._agreed_requeue(trainer)
        stop_as_on_sigterm(trainer)
        self._save(trainer)
        _requeue_from_global_zero(trainer, requeue)

    def _adopt_epoch_checkpoint(self, trainer: Trainer) -> bool:
        """If ``ModelCheckpoint`` wrote ``last`` at this very step (the epoch checkpoint), that is the one to resume."""
        path = _last_checkpoint_of_this_step(trainer) if self.filename is None else None
        if path is None:
            return False
        self.saved_path = path
        rank_zero_info(f"Stopping on a signal before epoch {trainer.current_epoch}: resume from {path}.")
        return True

    def checkpoint_path(self, trainer: Trainer) -> str:
        """Where the SIGTERM checkpoint goes."""
        callback = trainer.checkpoint_callback
        if isinstance(callback, ModelCheckpoint) and callback.dirpath:
            if self.filename is None and callback.last_model_path:
                return callback.last_model_path
            name = self.filename or callback.CHECKPOINT_NAME_LAST
            return os.path.join(callback.dirpath, name + callback.FILE_EXTENSION)
        return os.path.join(trainer.default_root_dir, "checkpoints", (self.filename or "last") + ".ckpt")

    def _save(self, trainer: Trainer) -> None:
        path = self.checkpoint_path(trainer)
        callback = trainer.checkpoint_callback
        if isinstance(callback, ModelCheckpoint) and self.filename is None and callback.save_last:
            # As ModelCheckpoint does: the last path is part of the saved state, so the resumed run
            # keeps overwriting this file instead of starting ``last-v1.ckpt``.
            callback.last_model_path = path
        trainer.save_checkpoint(path, weights_only=False)
        self.saved_path = path
        if _ctrl_c is not None:
            _ctrl_c.saved_path = path
        rank_zero_info(f"Stopping on a signal: saved a checkpoint at global step {trainer.global_step} to {path}.")


def _last_checkpoint_of_this_step(trainer: Trainer) -> str | None:
    """``ModelCheckpoint``'s last checkpoint, if it was written at the current global step."""
    callback = trainer.checkpoint_callback
    if isinstance(callback, ModelCheckpoint) and callback.last_model_path and last_global_step_saved(callback) == trainer.global_step:
        return callback.last_model_path
    return None


def _requeue_from_global_zero(trainer: Trainer, requeue: bool) -> None:
    """Requeue the SLURM job when asked to, once: from global rank 0, after every rank has saved."""
    if requeue and trainer.is_global_zero:
        requeue_slurm_job()


# Ctrl-C, for the command line's report --------------------------------------------------------


class _CtrlC:
    """A Ctrl-C received during ``fit`` in this process, and where its checkpoint went (if saved)."""

    saved_path: str | None = None


_ctrl_c: _CtrlC | None = None
"""Process-wide: the command line reports it after ``fit`` has ended, when no callback is at hand."""


def interrupted_by_ctrl_c() -> tuple[bool, str | None]:
    """Whether ``fit`` in this process was stopped by Ctrl-C, and the checkpoint saved then (or None)."""
    return _ctrl_c is not None, _ctrl_c.saved_path if _ctrl_c is not None else None

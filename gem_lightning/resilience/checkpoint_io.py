"""Checkpoints that survive being killed, and resume that reproduces the uninterrupted run.

What a resume from ``--ckpt_path last`` reproduces (Lightning 2.6, verified by ``tests/test_resume.py``):

* **From an epoch-boundary checkpoint** (the default: ``last.ckpt`` is rewritten at the end of every
  epoch, after validation), a run killed anywhere in the next epoch (SIGKILL, OOM, node failure)
  replays that whole epoch from its start, and the final weights are *identical* to those of an
  uninterrupted run: same batches in the same order, same augmentations, same dropout masks, same
  optimizer state. This needs :class:`RNGState` (Lightning does not save the random generators;
  a resumed run would otherwise start from ``seed_everything`` again and shuffle, augment and drop
  out differently), ``trainer.deterministic`` for bitwise-equal kernels, and loader workers that
  are re-created each epoch (``data.num_workers 0`` or ``data.persistent_workers false``):
  persistent workers carry their own random streams across epochs, which no checkpoint captures,
  so with them the replayed epoch gets other (equally valid) augmentations.
* **From a mid-epoch checkpoint** (``checkpoint.every_n_train_steps`` or the SIGTERM checkpoint of
  :class:`SaveOnSigterm`), the global step, epoch, optimizer, LR scheduler and callback states are
  exact and the epoch ends after the right number of steps, but the data is not: Lightning 2.6 can
  fast-forward only loaders that implement ``state_dict``/``load_state_dict``, and a plain
  ``DataLoader`` restarts the epoch's sampler from the beginning, so the rest of that epoch sees its
  *first* batches again (Lightning warns "resuming from a checkpoint that ended before the epoch
  ended"). Later epochs follow the same procedure but the weights have diverged. Such a checkpoint
  keeps the work done until a preemption; it does not promise bitwise equality.

Under DDP the same holds: the ``DistributedSampler`` order depends only on its seed and the epoch
(which the data module's sampler reads from the fit loop, as Lightning sets it too late on resume:
``gem_lightning.data.samplers``), and every rank resumes with the saved generator states (see :class:`RNGState`).
``--ckpt_path last`` looks in the ``ModelCheckpoint`` folder of the *new* run, which by default is
a new ``version_<n>`` folder; resume-friendly runs fix it (``--checkpoint.dirpath``), as
``scripts/slurm_fit.sh`` and ``scripts/torchrun_fit.sh`` do.

Pieces (``make_resumable(trainer)`` installs the last four on a trainer; ``GemCLI`` calls it, and
uses :class:`ResumableModelCheckpoint` for its ``checkpoint`` options):

* :class:`ResumableModelCheckpoint`: ``ModelCheckpoint`` whose ``save_last=True`` really writes the
  latest state at every epoch checkpoint. Lightning 2.6.0 changed ``save_last`` to write ``last.ckpt``
  only when a top-k checkpoint is written at the same step, so with ``monitor`` set and a metric
  that stops improving, ``last.ckpt`` silently stays at the best epoch and "resume from last"
  replays epochs that were already done.
* :class:`AtomicCheckpointIO`: writes every checkpoint to a temporary file in the target folder,
  fsyncs it and renames it over the target, so a kill during a save leaves the previous complete
  file, never a truncated one.
* :class:`RNGState`: saves and restores the torch (CPU and current CUDA device), NumPy and Python
  random generators with each checkpoint.
* :class:`SaveOnSigterm`: on SIGTERM (what SLURM, Kubernetes and torchrun send before stopping a job)
  saves a checkpoint at the current global step as ``last.ckpt`` and lets Lightning stop cleanly,
  also under DDP, where Lightning 2.6's own SIGTERM handler can crash the collectives; on SLURM it
  also turns the requeue signal (SIGUSR1) into a save at a batch or epoch end and a requeue.
* :class:`OwnProcessSignalConnector`: Lightning's signal handlers, run only by the trainer's own
  process, never by the loader workers that inherit them (``gem_lightning.resilience.signals``).
"""

from __future__ import annotations

import os
import random
import re
import secrets
import signal
import subprocess
import threading
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import Checkpoint, ModelCheckpoint
from lightning.pytorch.plugins.environments import SLURMEnvironment
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.trainer.connectors.signal_connector import _HandlersCompose, _SignalConnector
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.exceptions import SIGTERMException
from typing_extensions import override

from gem_lightning.errors import disk_full_error, is_disk_full
from gem_lightning.resilience.signals import OwnProcessHandler, install_handler, take_requeue_request

# Atomic writes ----------------------------------------------------------------------------------


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose saves are all-or-nothing on local disks.

    Lightning's own ``TorchCheckpointIO`` serialises into memory and writes through an fsspec
    transaction, which on a local disk means a temporary file in the system temp folder moved onto
    the target; when that folder is on another filesystem (``/tmp`` on tmpfs, a shared checkpoint
    volume) the move is a copy into the target, and a kill during it leaves a truncated
    ``last.ckpt``. Here the temporary file is created next to the target (same filesystem), flushed
    and fsynced, then ``os.replace``d onto it, and the folder is fsynced so the rename survives a
    power loss. Readers see the old complete file or the new complete file; a disk that fills up
    mid-write leaves the old file and ends in a :class:`~gem_lightning.errors.DiskFullError`. Remote paths (``s3://``
    and other fsspec URLs) keep Lightning's behaviour.

    The temporary file is named ``.<name>.<random>.tmp`` so that neither ``ckpt_path="last"`` nor
    ``ModelCheckpoint``'s file listing ever picks it up. A process killed mid-write leaves it
    behind; it is harmless, and nothing removes it (delete ``.*.tmp`` in checkpoint folders freely).
    """

    @override
    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(
                f"`Trainer.save_checkpoint(..., storage_options=...)` is not supported by `{type(self).__name__}`."
            )
        if not _is_local(path):
            super().save_checkpoint(checkpoint, path)
            return
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp, fd = _create_temporary(target)
        try:
            with os.fdopen(fd, "wb") as file:
                torch.save(checkpoint, file)
                file.flush()
                os.fsync(file.fileno())
            os.replace(tmp, target)
        except BaseException as error:
            tmp.unlink(missing_ok=True)
            if is_disk_full(error):
                advice = "Free some space (or set --checkpoint.dirpath to another disk) and run again."
                if target.exists():
                    advice = f"The previous {target.name} is intact: free some space, then resume with --ckpt_path {str(target)!r}."
                raise disk_full_error(target, "the checkpoint", advice) from error
            raise
        _fsync_dir(target.parent)


def _is_local(path) -> bool:
    from fsspec.implementations.local import LocalFileSystem

    return isinstance(get_filesystem(path), LocalFileSystem)


def _create_temporary(target: Path) -> tuple[Path, int]:
    """A new, exclusively created ``.<name>.<random>.tmp`` next to ``target`` (mode 0666 less the umask,
    like any file the process writes; ``tempfile.mkstemp`` would make it 0600)."""
    for _ in range(100):
        tmp = target.with_name(f".{target.name}.{secrets.token_hex(6)}.tmp")
        try:
            return tmp, os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        except FileExistsError:
            continue
    raise FileExistsError(f"could not create a temporary file next to {target}")


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. Windows: folders cannot be opened; the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# last.ckpt that is really the last --------------------------------------------------------------


class ResumableModelCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` with the pre-2.6 meaning of ``save_last=True``: at every epoch checkpoint
    (``every_n_epochs``, after validation or at the train epoch end), ``last.ckpt`` holds the
    latest state, whether or not the monitored metric improved.

    Lightning 2.6 writes ``last.ckpt`` at epoch ends only when a top-k file was written at the same
    step (see Lightning-AI/pytorch-lightning's 2.6.0 ``ModelCheckpoint``: "Only save last checkpoint
    if a checkpoint was actually saved in this step"). Step-based saves
    (``every_n_train_steps``) are unchanged. Same arguments as ``ModelCheckpoint``; its checkpoint
    state uses ``ModelCheckpoint``'s key, so checkpoints written with either class resume with the other.
    It relies on ``ModelCheckpoint`` internals of Lightning 2.6 (``pyproject.toml`` pins ``<2.7``);
    ``tests/test_resume.py`` checks the behaviour.
    """

    @property
    @override
    def state_key(self) -> str:
        key = super().state_key
        own = type(self).__qualname__
        return "ModelCheckpoint" + key[len(own):] if key.startswith(own) else key

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


# Random generators ------------------------------------------------------------------------------


class RNGState(Callback):
    """Saves the random generators with every checkpoint and restores them on resume.

    Saved: torch's CPU generator, the current CUDA device's generator (when CUDA is in use), NumPy's
    global ``RandomState`` and Python's ``random``, as plain tensors and tuples so that the checkpoint
    still loads with ``torch.load(weights_only=True)``. They are captured when the checkpoint is
    written (for epoch checkpoints: after validation, before the next epoch's loader is created)
    and restored as soon as the checkpoint's callback states are loaded; between those points
    Lightning consumes no random numbers (the sanity check runs under ``isolate_rng``), so the
    replayed epoch draws exactly what the uninterrupted run drew.

    Under DDP the ranks' generators differ (they are seeded alike, but rank 0 alone prepares the
    data, and each rank augments other images), so every rank's states are gathered into the
    checkpoint (``all_gather_object`` while the checkpoint is dumped, which Lightning does on every
    rank at once) and each rank restores its own. Resumed with another number of processes, rank
    ``r`` takes the states of rank ``r % saved``: the run continues, it is not a replay. Loader
    workers are seeded by Lightning from a number drawn in the main process (and the rank) when each
    epoch's loader iterator is created, which these states cover; the random streams of
    *persistent* workers live in the workers and are not captured.
    """

    def __init__(self) -> None:
        super().__init__()
        self._trainer: Trainer | None = None

    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._trainer = trainer

    @override
    def state_dict(self) -> dict[str, Any]:
        state = _local_rng_state()
        if not _distributed(self._trainer):
            return {"ranks": [state]}
        ranks: list[Any] = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(ranks, state)
        return {"ranks": ranks}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        ranks = state_dict.get("ranks")
        if not ranks:
            return
        rank = torch.distributed.get_rank() if _distributed(self._trainer) else 0
        _set_local_rng_state(ranks[rank % len(ranks)])


def _distributed(trainer: Trainer | None) -> bool:
    return (
        trainer is not None
        and trainer.world_size > 1
        and torch.distributed.is_available()
        and torch.distributed.is_initialized()
    )


def _local_rng_state() -> dict[str, Any]:
    keys, pos, has_gauss, cached_gaussian = np.random.get_state()[1:]
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_local_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    numpy_state = state["numpy"]
    np.random.set_state(
        ("MT19937", numpy_state["keys"].numpy().astype(np.uint32), numpy_state["pos"], numpy_state["has_gauss"],
         numpy_state["cached_gaussian"])
    )
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


# SIGTERM ----------------------------------------------------------------------------------------


class SaveOnSigterm(Callback):
    """On SIGTERM, save a resumable checkpoint at the current global step, then stop cleanly.

    Lightning 2.6 already turns SIGTERM into a stop: its handler sets ``trainer.received_sigterm``
    (and forwards the signal to the processes its own launcher started), and the loops raise
    ``SIGTERMException`` (a ``SystemExit``: the process exits with status 0) after the current
    training batch or before the next evaluation batch. It saves nothing. This callback saves, at
    the end of the training batch during which the signal arrived, the checkpoint that
    ``--ckpt_path last`` resumes from (a mid-epoch checkpoint: see the module docstring for what
    that resume reproduces). In a single process, a SIGTERM that arrives during validation stops it
    before its next batch and the checkpoint is saved from ``on_exception``.

    Ctrl-C (SIGINT) during ``fit`` is handled the same way: Lightning would raise
    ``KeyboardInterrupt`` wherever the program happens to be (half-way through an optimizer step,
    say) and save nothing; here the first Ctrl-C asks for the same stop-and-save as SIGTERM, and
    :func:`ctrl_c_checkpoint` tells the command line to report it (exit status 130). A second
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
    workers started by ``fork`` (``data.multiprocessing_context``) inherit them but never act on them.

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
        self._pid = os.getpid()
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
        if threading.current_thread() is threading.main_thread():
            self._pid = os.getpid()
            signal.signal(signal.SIGINT, partial(self._record_ctrl_c, trainer))

    @override
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._requested = self._requeue = self._stop_at_epoch_end = self._trained = False
        requeue_signal = _requeue_signal(trainer)
        if take_requeue_request() and requeue_signal is not None:
            rank_zero_info("A requeue signal arrived before training: saving and requeueing after the first batch.")
            self._requested = self._requeue = True
        # Lightning's signal connector restores the handlers it found when the trainer tears down.
        if trainer.world_size > 1:
            install_handler(signal.SIGTERM, partial(self._record, trainer, False))
        if requeue_signal is not None:
            install_handler(requeue_signal, partial(self._record, trainer, True))

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
        global _CTRL_C
        if os.getpid() != self._pid:
            return  # a loader worker: the main process decides
        if _CTRL_C is not None:
            signal.default_int_handler(signum, frame)  # raises KeyboardInterrupt: Lightning's shutdown, no save
        _CTRL_C = _CtrlC()
        rank_zero_info("\nCtrl-C: saving a resumable checkpoint after this batch (press Ctrl-C again to stop without saving).")
        self._requested = True
        if trainer.world_size == 1:
            trainer._signal_connector.received_sigterm = True  # the loops stop, as after Lightning's SIGTERM handler

    @override
    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int) -> None:
        self._trained = True
        if self._agreed_stop(trainer):
            self._stop(trainer)

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
        trainer._signal_connector.received_sigterm = True
        raise SIGTERMException  # on every rank at once: on_exception saves (or adopts) and requeues

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

    def _stop(self, trainer: Trainer) -> None:
        """Stop every rank after this batch (Lightning checks the flag there), save, and requeue if asked."""
        requeue = self._agreed_requeue(trainer)
        trainer._signal_connector.received_sigterm = True
        self._save(trainer)
        if requeue and trainer.is_global_zero:
            _requeue_slurm_job()

    def _adopt_epoch_checkpoint(self, trainer: Trainer) -> bool:
        """If ``ModelCheckpoint`` wrote ``last`` at this very step (the epoch checkpoint), that is the one to resume."""
        callback = trainer.checkpoint_callback
        if (
            self.filename is None
            and isinstance(callback, ModelCheckpoint)
            and callback.last_model_path
            and getattr(callback, "_last_global_step_saved", None) == trainer.global_step
        ):
            self.saved_path = callback.last_model_path
            rank_zero_info(f"Stopping on a signal before epoch {trainer.current_epoch}: resume from {self.saved_path}.")
            return True
        return False

    @override
    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, SIGTERMException) or self.saved_path is not None:
            return
        if self._stop_at_epoch_end:  # every rank is here, at the start of an epoch
            if not self._adopt_epoch_checkpoint(trainer):
                self._save(trainer)
            if self._requeue and trainer.is_global_zero:
                _requeue_slurm_job()
        elif trainer.world_size == 1 and trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking:
            self._save(trainer)

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
        if _CTRL_C is not None:
            _CTRL_C.saved_path = path
        rank_zero_info(f"Stopping on a signal: saved a checkpoint at global step {trainer.global_step} to {path}.")


class _CtrlC:
    """A Ctrl-C received during ``fit`` in this process, and where its checkpoint went (if saved)."""

    saved_path: str | None = None


_CTRL_C: _CtrlC | None = None


def ctrl_c_checkpoint() -> tuple[bool, str | None]:
    """Whether ``fit`` in this process was stopped by Ctrl-C, and the checkpoint saved then (or None)."""
    return _CTRL_C is not None, _CTRL_C.saved_path if _CTRL_C is not None else None


def _requeue_signal(trainer: Trainer) -> int | None:
    """The signal that asks this SLURM job to requeue itself, when Lightning's auto-requeue is on."""
    environment = getattr(trainer.strategy, "cluster_environment", None)
    if isinstance(environment, SLURMEnvironment) and environment.auto_requeue and hasattr(signal, "SIGUSR1"):
        return environment.requeue_signal or signal.SIGUSR1
    return None


def _requeue_slurm_job() -> None:
    """``scontrol requeue`` this job, as Lightning's SLURM signal handler does."""
    array_job = os.environ.get("SLURM_ARRAY_JOB_ID")
    job = f"{array_job}_{os.environ['SLURM_ARRAY_TASK_ID']}" if array_job else os.environ.get("SLURM_JOB_ID", "")
    if not re.fullmatch(r"[0-9_]+", job):
        rank_zero_warn(f"Not requeueing: unexpected SLURM job id {job!r}.")
        return
    try:
        status = subprocess.call(["scontrol", "requeue", job])
    except FileNotFoundError:
        rank_zero_warn("Not requeueing: `scontrol` is not on PATH.")
        return
    if status == 0:
        rank_zero_info(f"Requeued SLURM job {job}.")
    else:
        rank_zero_warn(f"`scontrol requeue {job}` failed with status {status}.")


# Lightning's handlers, for the trainer's process only ------------------------------------------


class OwnProcessSignalConnector(_SignalConnector):
    """Lightning's signal connector whose handlers run only in the process that installed them.

    Lightning's SIGTERM and SLURM-requeue handlers (``_HandlersCompose``) are inherited by any process
    forked from the trainer's (loader workers with ``data.multiprocessing_context: fork``), where
    they would save checkpoints, forward signals and run collectives on the trainer's behalf;
    wrapped in :class:`~gem_lightning.resilience.signals.OwnProcessHandler` they do nothing there. The
    handlers it restores at teardown are left as they were.
    """

    @staticmethod
    @override
    def _register_signal(signum, handlers) -> None:
        if isinstance(handlers, _HandlersCompose):
            handlers = OwnProcessHandler(handlers)
        _SignalConnector._register_signal(signum, handlers)


# Installation -----------------------------------------------------------------------------------


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
    if type(trainer._signal_connector) is _SignalConnector:
        trainer._signal_connector = OwnProcessSignalConnector(trainer)
    for callback_class in (RNGState, SaveOnSigterm):
        if any(isinstance(callback, callback_class) for callback in trainer.callbacks):
            continue
        position = next((i for i, cb in enumerate(trainer.callbacks) if isinstance(cb, Checkpoint)), len(trainer.callbacks))
        trainer.callbacks.insert(position, callback_class())
    if not any(isinstance(cb, ResumableModelCheckpoint) for cb in trainer.callbacks) and any(
        type(cb) is ModelCheckpoint and cb.save_last is True and cb.monitor for cb in trainer.callbacks
    ):
        rank_zero_warn(
            "ModelCheckpoint(save_last=True, monitor=...) in Lightning 2.6 refreshes last.ckpt only when the monitored "
            "metric improves; use gem_lightning.resilience.checkpoint_io.ResumableModelCheckpoint to resume from the latest epoch."
        )
    return trainer

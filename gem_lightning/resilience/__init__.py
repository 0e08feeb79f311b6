"""Run resilience: checkpoints that survive being killed, and resume that reproduces the uninterrupted run.

What a resume from ``--ckpt_path last`` reproduces (Lightning 2.6, verified by ``tests/test_resume.py``):

* **From an epoch-boundary checkpoint** (the default: ``last.ckpt`` is rewritten at the end of every
  epoch, after validation), a run killed anywhere in the next epoch (SIGKILL, OOM, node failure)
  replays that whole epoch from its start, and the final weights are *identical* to those of an
  uninterrupted run: same batches in the same order, same augmentations, same dropout masks, same
  optimizer state. This needs :class:`RNGState` (Lightning does not save the random generators;
  a resumed run would otherwise start from ``seed_everything`` again and shuffle, augment and drop
  out differently), ``trainer.deterministic`` for bitwise-equal kernels, and loader workers that
  are re-created each epoch (``data.loader.num_workers 0`` or ``data.loader.persistent_workers false``):
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

Pieces, one module each (:func:`make_resumable` installs the last four on a trainer; ``GemCLI``
calls it, and uses :class:`ResumableModelCheckpoint` for its ``checkpoint`` options):

* :class:`ResumableModelCheckpoint` (``last_checkpoint``): ``ModelCheckpoint`` whose ``save_last=True``
  really writes the latest state at every epoch checkpoint. Lightning 2.6.0 changed ``save_last`` to
  write ``last.ckpt`` only when a top-k checkpoint is written at the same step, so with ``monitor``
  set and a metric that stops improving, ``last.ckpt`` silently stays at the best epoch and "resume
  from last" replays epochs that were already done.
* :class:`AtomicCheckpointIO` (``atomic_checkpoint``): writes every checkpoint to a temporary file in
  the target folder, fsyncs it and renames it over the target, so a kill during a save leaves the
  previous complete file, never a truncated one.
* :class:`RNGState` (``rng_state``): saves and restores the torch (CPU and current CUDA device), NumPy
  and Python random generators with each checkpoint.
* :class:`SaveOnSigterm` (``preemption``, with ``slurm_requeue``): on SIGTERM (what SLURM, Kubernetes
  and torchrun send before stopping a job) saves a checkpoint at the current global step as
  ``last.ckpt`` and lets Lightning stop cleanly, also under DDP, where Lightning 2.6's own SIGTERM
  handler can crash the collectives; on SLURM it also turns the requeue signal (SIGUSR1) into a save
  at a batch or epoch end and a requeue; Ctrl-C during ``fit`` saves too (:func:`interrupted_by_ctrl_c`).
* :class:`OwnProcessSignalConnector` (``signal_connector``): Lightning's signal handlers, run only by
  the trainer's own process, never by the loader workers that inherit them (``signals``, which also
  keeps loader workers out of the job's signals and records a SLURM requeue signal outside training).

The private Lightning names these rely on are listed in :mod:`gem_lightning.compat.lightning`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gem_lightning.resilience.atomic_checkpoint import AtomicCheckpointIO
    from gem_lightning.resilience.install import make_resumable
    from gem_lightning.resilience.last_checkpoint import ResumableModelCheckpoint
    from gem_lightning.resilience.preemption import SaveOnSigterm, interrupted_by_ctrl_c
    from gem_lightning.resilience.rng_state import RNGState
    from gem_lightning.resilience.signal_connector import OwnProcessSignalConnector

_MODULE_OF = {
    "AtomicCheckpointIO": "atomic_checkpoint",
    "OwnProcessSignalConnector": "signal_connector",
    "RNGState": "rng_state",
    "ResumableModelCheckpoint": "last_checkpoint",
    "SaveOnSigterm": "preemption",
    "interrupted_by_ctrl_c": "preemption",
    "make_resumable": "install",
}

__all__ = [
    "AtomicCheckpointIO",
    "OwnProcessSignalConnector",
    "RNGState",
    "ResumableModelCheckpoint",
    "SaveOnSigterm",
    "interrupted_by_ctrl_c",
    "make_resumable",
]


def __getattr__(name: str) -> Any:
    """Import a public name's module on first use: ``main.py`` imports ``signals`` (standard library
    only) before anything else, to catch SLURM's signals during the slow imports of torch and Lightning."""
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_MODULE_OF[name]}"), name)

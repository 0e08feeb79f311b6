"""Random generators saved with every checkpoint: :class:`RNGState`.

Lightning saves no random generator: a resumed run would start again from ``seed_everything`` and
shuffle, augment and drop out differently from the run it continues. With these states restored,
a replayed epoch draws exactly the random numbers the uninterrupted run drew.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from typing_extensions import override


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
    return trainer is not None and trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized()


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
        (
            "MT19937",
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["pos"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    )
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])

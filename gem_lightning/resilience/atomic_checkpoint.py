"""Checkpoint saves that a kill cannot truncate: :class:`AtomicCheckpointIO`.

A job killed while ``last.ckpt`` is being written must still find the previous complete checkpoint
to resume from; the write itself goes through :func:`gem_lightning.files.atomic_write`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from fsspec.implementations.local import LocalFileSystem
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.plugins.io import TorchCheckpointIO
from typing_extensions import override

from gem_lightning.files import atomic_write


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
    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"`Trainer.save_checkpoint(..., storage_options=...)` is not supported by `{type(self).__name__}`.")
        if not _is_local(path):
            super().save_checkpoint(checkpoint, path)
            return
        target = Path(path)
        with atomic_write(target, what="the checkpoint", advice=_disk_full_advice(target)) as file:
            torch.save(checkpoint, file)


def _is_local(path: str | Path) -> bool:
    return isinstance(get_filesystem(path), LocalFileSystem)


def _disk_full_advice(target: Path) -> str:
    """What a full disk's error tells the user; a failed write leaves an existing ``target`` intact."""
    if target.exists():
        return f"The previous {target.name} is intact: free some space, then resume with --ckpt_path {str(target)!r}."
    return "Free some space (or set --checkpoint.dirpath to another disk) and run again."

"""All-or-nothing file writes: readers see the old complete file or the new one, never half of one.

Checkpoints, cached images, prediction files and reports are written through :func:`atomic_write`:
a kill, a power loss or a full disk in the middle of a write leaves the previous file intact.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from gem_lightning.errors import disk_full_error, is_disk_full


@contextmanager
def atomic_write(
    target: str | Path, mode: str = "wb", *, durable: bool = True, what: str = "the file", advice: str | None = None, **open_kwargs
) -> Iterator[IO]:
    """Open a temporary file beside ``target``; on a clean exit it replaces ``target`` in one rename.

    The temporary file, ``.<name>.<random>.tmp``, lives in the target's folder (same filesystem, so
    the rename is atomic; a move from ``/tmp`` may be a copy) and is removed on any error. With
    ``durable`` the data and the rename are fsynced, so they survive a power loss too (worth it for
    checkpoints and outputs; a cache that can be rebuilt skips it).

    Args:
        target: the file to write.
        mode: ``open`` mode, ``wb`` or ``w``.
        durable: fsync the file and its folder.
        what: how a full-disk error names the file (``the checkpoint``).
        advice: what a full-disk error tells the user to do; default: free space and run again.
        open_kwargs: passed to ``open`` (``newline``, ``encoding``).

    Raises:
        DiskFullError: the disk filled up; ``target`` is untouched.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp, fd = _create_temporary(target)
    try:
        with os.fdopen(fd, mode, **open_kwargs) as file:
            yield file
            file.flush()
            if durable:
                os.fsync(file.fileno())
        os.replace(tmp, target)
    except BaseException as error:
        tmp.unlink(missing_ok=True)
        if is_disk_full(error):
            raise (disk_full_error(target, what, advice) if advice else disk_full_error(target, what)) from error
        raise
    if durable:
        fsync_folder(target.parent)


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


def fsync_folder(folder: Path) -> None:
    """Make a rename inside ``folder`` durable (a no-op where folders cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)

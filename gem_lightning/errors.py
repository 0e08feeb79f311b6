"""Errors caused by the user's input (folders, files, settings): reported without a traceback."""

from __future__ import annotations

import errno
import shutil
from collections.abc import Callable
from pathlib import Path


class UserInputError(ValueError):
    """Something the user gave cannot be used; the message names it and says how to fix it."""


class DiskFullError(UserInputError, OSError):
    """The disk filled up while writing: nothing the user typed, but something only they can fix."""


_EXPLAINERS: list[Callable[[BaseException], UserInputError | None]] = []


def explain_failures_with(explainer: Callable[[BaseException], UserInputError | None]) -> None:
    """Register a function that recognises failures of something the user named (an object store a
    stream lives in, say) deep inside a library or a loader worker, and says what to fix in one line."""
    if explainer not in _EXPLAINERS:
        _EXPLAINERS.append(explainer)


def explained(error: BaseException) -> UserInputError | None:
    """The user-facing form of ``error`` that a registered explainer gives, if any."""
    return next((found for explainer in _EXPLAINERS if (found := explainer(error)) is not None), None)


DISK_FULL_ERRNOS = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


def is_disk_full(error: BaseException) -> bool:
    """Whether ``error`` (or what caused it) says the disk or the user's quota is full.

    ``torch.save`` reports a failed write as a ``RuntimeError`` from its C++ zip writer, with the
    ``OSError`` of the Python write, when there was one, as its cause or context.
    """
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in DISK_FULL_ERRNOS:
            return True
        error = error.__cause__ or error.__context__
    return False


def disk_full_error(path: Path, what: str, advice: str = "Free some space, or write to another disk, and run again.") -> DiskFullError:
    """The error for a write of ``what`` to ``path`` that failed because the disk is full."""
    folder = next((p for p in (Path(path).parent, *Path(path).parents) if p.exists()), Path("."))
    free = shutil.disk_usage(folder).free
    return DiskFullError(
        f"the disk is full: could not write {what} {str(path)!r} ({free / 2**20:.1f} MiB free on the disk of {str(folder)!r}). {advice}"
    )

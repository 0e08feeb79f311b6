"""A tune worker's stop request: SIGTERM (``scancel``, a time limit, ``kill``) or Ctrl-C ends the worker cleanly.

While a trial trains, Lightning's handler (which calls this one too) and
:class:`~gem_lightning.resilience.SaveOnSigterm` stop the fit at the next step and save its
checkpoint; between trials, or while a trial is being set up, the request is only recorded here,
and the worker starts no further trial. A second Ctrl-C interrupts at once.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from gem_lightning.resilience.signals import install_handler

_requested: str | None = None


def requested() -> str | None:
    """The name of the signal that asked this worker to stop (``SIGTERM``), or None."""
    return _requested


def request(reason: str) -> None:
    global _requested
    _requested = _requested or reason


def _record(signum: int, frame: Any) -> None:
    if signum == signal.SIGINT and _requested:
        raise KeyboardInterrupt
    request(signal.Signals(signum).name)


@contextmanager
def listening() -> Iterator[None]:
    """Record SIGTERM and Ctrl-C as a stop request while the worker runs; the handlers found are restored after."""
    global _requested
    _requested = None
    previous = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)}
    installed = [signum for signum in previous if install_handler(signum, _record)]  # only the main thread can
    try:
        yield
    finally:
        for signum in installed:
            signal.signal(signum, previous[signum])

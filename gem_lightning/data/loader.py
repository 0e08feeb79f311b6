"""``DataLoader`` whose workers start from a single-threaded process and never act on the trainer's signals."""

from __future__ import annotations

import multiprocessing
import os
from dataclasses import dataclass
from functools import partial
from multiprocessing import forkserver
from multiprocessing.context import BaseContext
from typing import Literal

import torch
from litdata import StreamingDataLoader
from torch.utils.data import DataLoader
from typing_extensions import override

from gem_lightning.resilience.signals import blocked_worker_signals, start_worker

DEFAULT_START_METHOD: str = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
"""How loader workers start unless told otherwise: forked from a forkserver, never from the trainer.

A process that trains has threads (Lightning's child-process observer, tqdm's monitor, the
loaders' queue feeders, gloo's); ``fork`` copies such a process whatever its other threads are
doing, and on Python 3.11 workers forked so hung for good inside ``os.fork()`` now and then
(``PyOS_AfterFork_Child`` waiting on a lock that no thread of the child would ever release),
hanging their DDP rank with them. The forkserver is a process of its own, started once, without
threads: workers forked from it start clean. ``spawn`` where the platform has no forkserver (Windows).
"""

WORKER_PRELOAD = ["__main__", "gem_lightning.data.datamodule"]
"""Imported once by the forkserver, so that each worker forked from it starts in milliseconds."""


@dataclass(frozen=True)
class Loader:
    """How batches are loaded (``data.loader``).

    Args:
        num_workers: DataLoader worker processes; default: one per spare core (at most eight).
        pin_memory: pin host memory for faster copies to a GPU; default: when CUDA is available.
        persistent_workers: keep workers alive between epochs.
        multiprocessing_context: how loader and decoding workers start: ``forkserver`` (the default
            where the platform has one) forks them from a single-threaded server process, never
            from the training process, whose threads can deadlock a forked child; ``fork`` forks
            the training process; ``spawn`` (Windows' only method) starts fresh interpreters.
    """

    num_workers: int | None = None
    pin_memory: bool | None = None
    persistent_workers: bool = True
    multiprocessing_context: Literal["forkserver", "fork", "spawn"] = DEFAULT_START_METHOD

    def problems(self) -> list[str]:
        """What cannot work, each naming its setting."""
        problems = []
        if self.num_workers is not None and self.num_workers < 0:
            problems.append(f"data.loader.num_workers must be 0 (load in the main process) or more, got {self.num_workers}")
        if self.multiprocessing_context not in multiprocessing.get_all_start_methods():
            problems.append(
                f"data.loader.multiprocessing_context must be one of this platform's start methods "
                f"({', '.join(multiprocessing.get_all_start_methods())}), got {self.multiprocessing_context!r}"
            )
        return problems

    @property
    def workers(self) -> int:
        """``num_workers``, resolved."""
        return min(8, max(1, (os.cpu_count() or 2) - 1)) if self.num_workers is None else self.num_workers

    @property
    def pinned(self) -> bool:
        """``pin_memory``, resolved."""
        return torch.cuda.is_available() if self.pin_memory is None else self.pin_memory

    def options(self) -> dict:
        """``DataLoader`` keyword arguments."""
        return {
            "num_workers": self.workers,
            "pin_memory": self.pinned,
            "persistent_workers": self.persistent_workers and self.workers > 0,
            "multiprocessing_context": self.multiprocessing_context,
        }


def worker_context(method: str | BaseContext | None = None) -> BaseContext:
    """The multiprocessing context workers start with (``DEFAULT_START_METHOD`` for None); a
    forkserver's preloads the data code."""
    context = method if isinstance(method, BaseContext) else multiprocessing.get_context(method or DEFAULT_START_METHOD)
    if context.get_start_method() == "forkserver":
        context.set_forkserver_preload(WORKER_PRELOAD)
    return context


def start_worker_server(method: str | None = None) -> None:
    """Start the forkserver now, if that is how workers start, so that its imports (seconds) overlap
    with the rest of the set-up instead of delaying the first batch. Idempotent; workers would
    start it anyway. It is a process of the job: it starts with the job's signals blocked."""
    if worker_context(method).get_start_method() == "forkserver":
        with blocked_worker_signals("forkserver"):
            forkserver.ensure_running()


class SignalSafeDataLoader(DataLoader):
    """A ``DataLoader`` whose workers ignore SIGUSR1, SIGTERM and SIGINT, started by ``DEFAULT_START_METHOD``.

    SLURM signals every process of a job step; a worker that ran the trainer's SIGUSR1 handler
    (forked) or died of it (spawned) would hang or fail its rank. The workers are started with those
    signals blocked and ignore them before running the loader's own ``worker_init_fn`` (the one
    given, or Lightning's seeding function, which is set by the time the workers start). Same
    arguments and behaviour as ``DataLoader`` otherwise; ``multiprocessing_context`` chooses another
    start method (``fork``: at the risk above; measured no faster, ``benchmarks/worker_start.py``).
    Overrides torch's private ``_get_iterator``, where the workers start (:mod:`gem_lightning.compat.torch`).
    """

    def __init__(self, *args, multiprocessing_context=None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self.num_workers > 0:
            self.multiprocessing_context = worker_context(multiprocessing_context)

    @override
    def _get_iterator(self):
        if self.num_workers == 0:
            return super()._get_iterator()
        worker_init_fn = self.worker_init_fn
        self.worker_init_fn = partial(start_worker, worker_init_fn, os.getpid())
        try:
            with blocked_worker_signals(self.multiprocessing_context.get_start_method()):
                return super()._get_iterator()
        finally:
            self.worker_init_fn = worker_init_fn


class SignalSafeStreamingDataLoader(SignalSafeDataLoader, StreamingDataLoader):
    """LitData's ``StreamingDataLoader`` (its position goes into checkpoints, so a run stopped
    mid-epoch resumes there) with the signal-safe workers of :class:`SignalSafeDataLoader`."""

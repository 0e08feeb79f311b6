"""``DataLoader`` whose worker processes never act on the trainer's signals (see ``gem_lightning.signals``)."""

from __future__ import annotations

import multiprocessing
import os
from functools import partial

from torch.utils.data import DataLoader
from typing_extensions import override

from gem_lightning.signals import blocked_worker_signals, start_worker


class SignalSafeDataLoader(DataLoader):
    """A ``DataLoader`` whose workers ignore SIGUSR1, SIGTERM and SIGINT, with any start method.

    SLURM signals every process of a job step; a worker that ran the trainer's SIGUSR1 handler
    (forked) or died of it (spawned) would hang or fail its rank. The workers are started with those
    signals blocked and ignore them before running the loader's own ``worker_init_fn`` (the one
    given, or Lightning's seeding function, which is set by the time the workers start). Same
    arguments and behaviour as ``DataLoader`` otherwise.
    """

    @override
    def _get_iterator(self):
        if self.num_workers == 0:
            return super()._get_iterator()
        worker_init_fn = self.worker_init_fn
        self.worker_init_fn = partial(start_worker, worker_init_fn, os.getpid())
        try:
            with blocked_worker_signals((self.multiprocessing_context or multiprocessing).get_start_method()):
                return super()._get_iterator()
        finally:
            self.worker_init_fn = worker_init_fn

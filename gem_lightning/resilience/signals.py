"""Which process acts on a signal: the one that installed the handler, never its children.

SLURM sends its signals (``--signal=SIGUSR1@90`` before a time limit, SIGTERM on ``scancel`` or
preemption) to every process of a job step, DataLoader workers included; torchrun and a terminal's
Ctrl-C likewise reach a whole process group. A loader worker started by ``fork`` inherits the
trainer's Python handlers and would run them: Lightning's SLURM handler saves a checkpoint from the
worker and runs collectives on the process group the worker inherited, which hangs the ranks (they
wait for that worker's batch) or writes into their own collectives. A worker started by ``spawn``
or ``forkserver`` has the default actions instead, and SIGUSR1 or SIGTERM kill it, so its rank
fails with "DataLoader worker exited unexpectedly". Hence:

* :class:`OwnProcessHandler` wraps a handler so that it runs only in the process that installed it;
  every handler of the trainer (Lightning's, through ``signal_connector.OwnProcessSignalConnector``,
  and ``preemption.SaveOnSigterm``'s) is installed that way.
* :func:`blocked_worker_signals` and :func:`start_worker` make loader workers ignore SIGUSR1,
  SIGINT and any SIGTERM but their loader's from their first instruction, whatever the start
  method: the signals are blocked in the loader's process while it starts workers (the mask is inherited
  through fork and exec), and each worker then ignores them (SIGTERM: unless the loader's process sent it,
  which is how the loader and multiprocessing stop workers). A job's final SIGKILL still ends it.
* :func:`listen_for_requeue_signal` (called by ``main.py`` before anything else under SLURM) records
  a SIGUSR1 that arrives outside training (while starting, preparing data, after ``fit``) instead
  of letting it kill the task, which would end the job as FAILED. ``SaveOnSigterm`` acts on a
  request recorded before training starts (save and requeue after the first training batch); one
  that arrives after training is over is only logged, also while the interpreter shuts down.

Standard library only, so that ``main.py`` can install the listener before importing torch.
"""

from __future__ import annotations

import atexit
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from multiprocessing import resource_tracker
from typing import Any

WORKER_SIGNALS: tuple[signal.Signals, ...] = tuple(
    getattr(signal, name) for name in ("SIGUSR1", "SIGTERM", "SIGINT") if hasattr(signal, name)
)
"""What loader workers leave to the process whose loader started them (it stops them when it is done with them)."""

_requeue_requested = False


class OwnProcessHandler:
    """A signal handler that runs only in the process that created it.

    A process forked from that one inherits the handler; there it does nothing (the signal is
    ignored), so a child never saves checkpoints, runs collectives or requeues a job on the
    trainer's behalf.
    """

    def __init__(self, handler: Callable[[int, Any], Any]) -> None:
        self.handler = handler
        self.pid = os.getpid()

    def __call__(self, signum: int, frame: Any) -> None:
        if os.getpid() == self.pid:
            self.handler(signum, frame)

    def __repr__(self) -> str:
        return f"OwnProcessHandler({self.handler!r}, pid={self.pid})"


def install_handler(signum: int, handler: Callable[[int, Any], Any]) -> bool:
    """``signal.signal(signum, OwnProcessHandler(handler))``; only the main thread may; returns whether it did."""
    if threading.current_thread() is not threading.main_thread():
        return False
    signal.signal(signum, handler if isinstance(handler, OwnProcessHandler) else OwnProcessHandler(handler))
    return True


# Loader workers ---------------------------------------------------------------------------------


@contextmanager
def blocked_worker_signals(start_method: str = "fork") -> Iterator[None]:
    """Block :data:`WORKER_SIGNALS` in this thread while child processes are started.

    Children inherit the blocked mask (through ``fork``, and through ``exec`` for ``spawn`` and
    ``forkserver``), so a signal cannot reach a worker before :func:`start_worker` takes charge.
    Signals that arrive meanwhile stay pending for this process and are handled when the block ends.
    With ``spawn`` and ``forkserver``, multiprocessing's resource tracker (a process of the job too)
    is started first, under the same block: it ignores SIGINT and SIGTERM itself but would die of
    SIGUSR1, and starting it unblocks SIGINT and SIGTERM in this thread, so they are blocked again.
    """
    if not hasattr(signal, "pthread_sigmask"):  # Windows: no POSIX signals to block
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, WORKER_SIGNALS)
    try:
        if start_method != "fork":
            resource_tracker.ensure_running()
            signal.pthread_sigmask(signal.SIG_BLOCK, WORKER_SIGNALS)
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def start_worker(worker_init_fn: Callable[[int], Any] | None, loader_pid: int, worker_id: int) -> None:
    """``worker_init_fn`` of loader workers: ignore the job's signals, then run ``worker_init_fn``.

    SIGUSR1 and SIGINT are ignored (pending ones, sent while the worker started, are discarded).
    SIGTERM stays blocked and a thread waits for it: sent by ``loader_pid``, the process whose
    loader started the worker (its shutdown, or multiprocessing terminating workers at exit), it
    ends the worker as usual; sent by anyone else (SLURM's ``scancel``, preemption, a ``kill`` of
    the process group) it is ignored, and the loader's process decides.
    """
    if not hasattr(signal, "pthread_sigmask"):
        return worker_init_fn(worker_id) if worker_init_fn is not None else None
    ignored = [signum for signum in WORKER_SIGNALS if signum != signal.SIGTERM]
    for signum in ignored:
        signal.signal(signum, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    signal.pthread_sigmask(signal.SIG_UNBLOCK, ignored)
    threading.Thread(target=_obey_sigterm_from, args=(loader_pid,), name="sigterm-from-loader", daemon=True).start()
    if worker_init_fn is not None:
        worker_init_fn(worker_id)


def _obey_sigterm_from(sender: int) -> None:
    while signal.sigwaitinfo({signal.SIGTERM}).si_pid != sender:
        pass
    os._exit(128 + signal.SIGTERM)  # what SIGTERM's default action would have done (only the main thread may restore it)


# SIGUSR1 outside training -----------------------------------------------------------------------


def listen_for_requeue_signal() -> bool:
    """Under SLURM, record SIGUSR1 from now on instead of dying of it; returns whether it was installed.

    SIGUSR1's default action terminates the process; SLURM sends it (``--signal=SIGUSR1@<s>``, or
    ``scancel --signal=USR1``) whenever it chooses, also before training starts and after it ends.
    Lightning installs its own handler only for the training itself and restores the previous one
    afterwards; with this one in place a late signal is logged and the task still exits 0.
    """
    if "SLURM_JOB_ID" not in os.environ or not hasattr(signal, "SIGUSR1"):
        return False
    if not install_handler(signal.SIGUSR1, _record_requeue_request):
        return False
    atexit.register(_ignore_requeue_signal)
    return True


def _ignore_requeue_signal() -> None:
    """At exit: ignore SIGUSR1 from now on. The interpreter's shutdown puts SIGUSR1's default action
    (terminate) back in place of a Python handler, and a signal in the rest of the shutdown (the
    libraries' own teardown) would end the task "killed by SIGUSR1" and fail a finished job; an
    ignored signal stays ignored."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)


def _record_requeue_request(signum: int, frame: Any) -> None:
    global _requeue_requested
    _requeue_requested = True
    if os.environ.get("SLURM_PROCID", "0") == "0":
        print(
            f"Signal {signum} received outside training: if training is still to come it saves and requeues "
            "the job after its first batch, otherwise the signal is ignored.",
            file=sys.stderr,
            flush=True,
        )


def take_requeue_request() -> bool:
    """Whether a requeue signal was recorded outside training (and forget it)."""
    global _requeue_requested
    requested, _requeue_requested = _requeue_requested, False
    return requested

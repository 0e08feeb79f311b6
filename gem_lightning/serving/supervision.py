"""Model worker supervision: restart a dead worker, answer 503 for its requests, give up with an exit status.

Why our own, and not only LitServe's (0.2.19) ``LitServer._start_worker_monitoring``:

* Without ``restart_workers`` its monitor thread calls ``_perform_graceful_shutdown`` itself but never
  sets ``_shutdown_event``: the HTTP servers are stopped (uvicorn first waits up to 30 s for requests
  that will never be answered), yet ``run()`` goes on waiting, so ``serve`` does not exit and a service
  manager never restarts it.
* With ``restart_workers`` it restarts a dead worker forever (a model that cannot load is a busy loop),
  keeps restarting while ``serve`` stops on SIGTERM (the main thread's KeyboardInterrupt does not set
  ``_shutdown_event``), and marks the requests in flight as failed in the *main* process's
  ``response_buffer``, but they wait in the forked uvicorn processes' own buffers (and it only marks
  those whose ``worker_id`` matches, which is set from the START message, if ever). LitServe has no
  HTTP-side timeout, so they hang.

So LitServe's own pieces are kept: ``launch_single_inference_worker`` starts the replacement (loading
the model), and ``workers_setup_status`` (shared through its manager) drives ``GET /health``. This
module adds :class:`Supervisor`, the monitor loop in the ``serve`` process (restart, crash-loop limit,
quiet during shutdown, failure recorded for the exit status), and :func:`fail_requests_on_worker_loss`,
which in each HTTP process answers the requests in flight with 503 when a worker stops being ready.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import litserve as ls
from fastapi import HTTPException
from litserve.utils import LitAPIStatus, WorkerSetupStatus

from gem_lightning.compat.litserve import disable_worker_monitor, request_shutdown, shutdown_requested

logger = logging.getLogger(__name__)

RETRY_AFTER_S = 5
"""What the 503 answers tell clients to wait: a restarted worker loads the model in a few seconds."""


class Supervisor:
    """Watches the model workers from the ``serve`` process; replaces LitServe's monitor.

    A dead worker is restarted at once. More than ``max_deaths`` deaths within ``window_s`` seconds,
    or a replacement that cannot load the model, make it give up: ``failure`` says why and the server
    shuts down, so ``serve`` exits non-zero and systemd, Docker or Kubernetes restart it.
    """

    def __init__(self, server: ls.LitServer, max_deaths: int = 3, window_s: float = 60.0, poll_s: float = 0.25) -> None:
        self.server = server
        self.max_deaths = max_deaths
        self.window_s = window_s
        self.poll_s = poll_s
        self.stopping = False
        self.failure: str | None = None
        self._deaths: deque[float] = deque()
        disable_worker_monitor(server)  # LitServe's monitor would race this one

    def start(self) -> None:
        """Start watching in a daemon thread; call before ``server.run``."""
        threading.Thread(target=self._run, daemon=True, name="gem-worker-supervisor").start()

    def _run(self) -> None:
        """Wait for the workers to be ready once, then check them every ``poll_s`` until shutdown."""
        try:
            while not self._ready():
                time.sleep(self.poll_s)
            while not self.stopping and not shutdown_requested(self.server):
                self._check()
                time.sleep(self.poll_s)
        except Exception:  # the manager is gone: the server is already shutting down
            logger.debug("worker supervisor stopped", exc_info=True)

    def _ready(self) -> bool:
        """The server has started its workers and every one has loaded the model."""
        if self.stopping:
            raise RuntimeError("stopping")
        statuses = getattr(self.server, "workers_setup_status", None)
        workers = getattr(self.server, "inference_workers", None)
        return bool(workers) and bool(statuses) and all(s == WorkerSetupStatus.READY for s in statuses.values())

    def _check(self) -> None:
        """Restart the dead workers, or give up when they die too often or cannot load the model."""
        if WorkerSetupStatus.ERROR in self.server.workers_setup_status.values():
            return self._give_up("a restarted model worker could not load the model")
        for index, process in enumerate(list(self.server.inference_workers)):
            if process.is_alive() or self.stopping:
                continue
            logger.warning("model worker %d (pid %s) died with exit code %s", index, process.pid, process.exitcode)
            if self._too_many_deaths():
                return self._give_up(f"model workers died {len(self._deaths)} times within {self.window_s:.0f} s")
            self._restart(index)

    def _too_many_deaths(self) -> bool:
        """Count one death; true when the last ``window_s`` seconds hold ``max_deaths`` of them."""
        now = time.monotonic()
        self._deaths.append(now)
        while self._deaths and now - self._deaths[0] > self.window_s:
            self._deaths.popleft()
        return len(self._deaths) >= self.max_deaths

    def _restart(self, index: int) -> None:
        """LitServe's own restart: a new spawned worker that loads the model (status STARTING, then READY)."""
        lit_api = self.server.litapi_connector.lit_apis[0]  # this server has one LitAPI: index == worker id
        process = self.server.launch_single_inference_worker(lit_api, index)
        self.server.inference_workers[index] = process
        if self.stopping:  # SIGTERM came meanwhile: LitServe's shutdown may have missed the new one
            process.terminate()
        logger.warning("model worker %d restarted (pid %s)", index, process.pid)

    def _give_up(self, reason: str) -> None:
        """Record why, mark the workers failed (``/health`` 503, requests 503) and shut the server down."""
        self.failure = reason
        logger.error("giving up: %s; shutting down", reason)
        for key in list(self.server.workers_setup_status.keys()):
            self.server.workers_setup_status[key] = WorkerSetupStatus.ERROR
        time.sleep(2 * self.poll_s)  # lets the HTTP processes answer the waiting requests with 503
        request_shutdown(self.server)


def fail_requests_on_worker_loss(server: ls.LitServer, poll_s: float = 0.25) -> None:
    """In each HTTP process, answer 503 to the requests waiting when a model worker stops being ready.

    A worker killed mid-batch never answers its requests, and LitServe waits for them without a timeout.
    The supervisor marks a replacement STARTING at once, so a worker's leaving READY is the signal.
    Requests sent after that wait in the queue and are answered by the replacement.
    """
    original = server.app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        async with original(app):
            watcher = asyncio.get_running_loop().create_task(_watch_workers(server, poll_s))
            try:
                yield
            finally:
                watcher.cancel()

    server.app.router.lifespan_context = lifespan


async def _watch_workers(server: ls.LitServer, poll_s: float) -> None:
    """Fail the waiting requests when the workers go from all ready to not, or are marked failed."""
    was_ready = True
    while True:
        await asyncio.sleep(poll_s)
        try:
            statuses = await asyncio.to_thread(lambda: list(server.workers_setup_status.values()))
        except (OSError, EOFError):  # the manager is gone: shutting down
            return
        ready = bool(statuses) and all(status == WorkerSetupStatus.READY for status in statuses)
        if (was_ready and not ready) or WorkerSetupStatus.ERROR in statuses:
            _fail_waiting(server.response_buffer)
        was_ready = ready


def _fail_waiting(response_buffer: dict) -> None:
    """Answer every request still waiting for a worker with a 503 (LitServe re-raises the HTTPException)."""
    error = HTTPException(
        status_code=503,
        detail=f"the model worker stopped while handling this request; it is being restarted: retry in {RETRY_AFTER_S} s",
        headers={"Retry-After": str(RETRY_AFTER_S)},
    )
    for item in list(response_buffer.values()):
        if not item.event.is_set() and item.response_queue is None:
            item.response = (error, LitAPIStatus.ERROR)
            item.event.set()

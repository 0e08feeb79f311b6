"""``serve`` when its model worker is killed (as the OOM killer does): 503s, a restart, or a non-zero exit."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass

import pytest
from serving import Server, alive, descendants, model_workers, start_server
from test_serve import server_env, trained  # noqa: F401 (the module's tiny checkpoint fixture)

pytestmark = pytest.mark.slow
HANG_S = 10.0
"""A request in flight when the worker dies must be answered sooner than this."""


@dataclass
class Sent:
    started: float
    ended: float
    status: int | None  # None: no answer (timeout or connection error)
    detail: str | None = None


def keep_posting(server: Server, photo: bytes, until: threading.Event, sent: list[Sent]) -> None:
    """Post ``photo`` in a loop until ``until`` is set, recording every answer."""
    while not until.is_set():
        started = time.monotonic()
        try:
            answer = server.predict(photo, timeout=HANG_S + 5)
            detail = answer.json().get("detail") if answer.status != 200 else None
            sent.append(Sent(started, time.monotonic(), answer.status, detail))
        except OSError:
            sent.append(Sent(started, time.monotonic(), None))


def watch_health(server: Server, until: threading.Event, seen: list[tuple[float, int | None]]) -> None:
    """Poll ``GET /health`` every 0.1 s until ``until`` is set."""
    while not until.is_set():
        try:
            seen.append((time.monotonic(), server.request("/health", timeout=5).status))
        except OSError:
            seen.append((time.monotonic(), None))
        time.sleep(0.1)


def the_worker(server: Server) -> int:
    """The pid of the server's one model worker."""
    workers = model_workers(server.process.pid)
    assert len(workers) == 1, workers
    return workers[0]


def wait_for_exit(server: Server, timeout: float) -> int | None:
    """The exit status, or None if still running after ``timeout`` seconds."""
    try:
        return server.process.wait(timeout)
    except subprocess.TimeoutExpired:
        return None


def test_a_killed_worker_is_restarted_and_its_requests_get_503(trained, tmp_path):  # noqa: F811
    server = start_server(
        trained.checkpoint, tmp_path / "serve.log", server_env(tmp_path), "--max_batch_size", "4", "--batch_timeout", "0.3"
    )
    try:
        photo = trained.photos[0].read_bytes()
        stop, sent, health = threading.Event(), [], []
        threads = [threading.Thread(target=keep_posting, args=(server, photo, stop, sent)) for _ in range(4)]
        threads.append(threading.Thread(target=watch_health, args=(server, stop, health)))
        for thread in threads:
            thread.start()
        time.sleep(1.5)
        worker = the_worker(server)
        killed = time.monotonic()
        os.kill(worker, signal.SIGKILL)
        deadline = killed + 20
        while time.monotonic() < deadline and not any(s.status == 200 and s.started > killed + 0.5 for s in sent):
            time.sleep(0.2)
        time.sleep(1)
        stop.set()
        for thread in threads:
            thread.join(HANG_S + 10)
        log = server.log.read_text()
        in_flight = [s for s in sent if s.started < killed < s.ended]
        assert in_flight, log
        assert all(s.status in (200, 503) and s.ended - killed < HANG_S for s in in_flight), (in_flight, log)
        assert not [s for s in sent if s.status is None], log  # nothing hung or was dropped
        assert all("restarted" in s.detail for s in sent if s.status == 503), log
        resumed = [s.ended - killed for s in sent if s.status == 200 and s.started > killed + 0.5]
        assert resumed and min(resumed) < 15, log
        down = [status for at, status in health if at > killed]
        assert 503 in down and down[-1] == 200, (down, log)
        assert the_worker(server) != worker
    finally:
        assert server.stop() == 0, server.log.read_text()


def test_serve_exits_non_zero_when_the_worker_cannot_be_restarted(trained, tmp_path):  # noqa: F811
    checkpoint = tmp_path / "model.ckpt"
    shutil.copy(trained.checkpoint, checkpoint)
    server = start_server(checkpoint, tmp_path / "serve.log", server_env(tmp_path))
    children = descendants(server.process.pid)
    checkpoint.write_bytes(b"no longer a checkpoint")  # the replacement cannot load the model
    os.kill(the_worker(server), signal.SIGKILL)
    status = wait_for_exit(server, 60)
    log = server.log.read_text()
    server.stop()
    assert status not in (None, 0), log
    assert "could not load the model" in log, log
    deadline = time.monotonic() + 10
    while [pid for pid in children if alive(pid)] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [pid for pid in children if alive(pid)], log


def test_serve_exits_non_zero_when_the_worker_keeps_dying(trained, tmp_path):  # noqa: F811
    server = start_server(trained.checkpoint, tmp_path / "serve.log", server_env(tmp_path))
    for _ in range(3):  # each replacement is killed as soon as it has started
        worker = the_worker(server)
        os.kill(worker, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and server.process.poll() is None and set(model_workers(server.process.pid)) <= {worker}:
            time.sleep(0.1)
        if server.process.poll() is not None:
            break
    status = wait_for_exit(server, 60)
    log = server.log.read_text()
    server.stop()
    assert status not in (None, 0), log
    assert "died 3 times" in log, log

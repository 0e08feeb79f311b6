"""Helpers for the tests that run a real ``python main.py serve`` process on a loopback port."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from conftest import REPO
from helpers import free_port

STARTUP_S = 240.0
"""Worker processes import torch and load the model: tens of seconds on a busy 2-core machine."""


@dataclass
class Answer:
    status: int
    body: bytes

    def json(self) -> dict:
        return json.loads(self.body)


@dataclass
class Server:
    """A running ``serve`` process; ``request`` talks to it."""

    process: subprocess.Popen
    url: str
    log: Path
    api_key: str | None = None

    def request(
        self,
        path: str,
        body: bytes | None = None,
        content_type: str | None = None,
        method: str | None = None,
        key: str | None = "default",
        timeout: float = 60.0,
    ) -> Answer:
        headers = {"Content-Type": content_type} if content_type else {}
        key = self.api_key if key == "default" else key
        if key:
            headers["X-API-Key"] = key
        request = urllib.request.Request(
            self.url + path, data=body, headers=headers, method=method or ("POST" if body is not None else "GET")
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return Answer(response.status, response.read())
        except urllib.error.HTTPError as error:
            return Answer(error.code, error.read())

    def predict(self, image: bytes, content_type: str = "image/jpeg", query: str = "", **kwargs) -> Answer:
        return self.request(f"/predict{query}", image, content_type, **kwargs)

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM, as a service manager stops it; returns the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def descendants(pid: int) -> list[int]:
    """Every process started by ``pid``, its children's children included (from /proc)."""
    found, pending = [], [pid]
    while pending:
        parent = pending.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            try:
                children = [int(child) for child in (task / "children").read_text().split()]
            except OSError:
                continue
            found += children
            pending += children
    return found


def alive(pid: int) -> bool:
    """Running (not a zombie waiting for its parent)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def start_server(ckpt: Path, log: Path, env: dict, *args: str) -> Server:
    """Start ``python main.py serve --ckpt_path ckpt`` on a free port and wait until ``/health`` says ok.

    A new interpreter, as ``serve`` starts in production: the server's own worker processes and its
    supervision (a killed worker restarted, its requests answered) are what these tests are about."""
    port = free_port()
    command = [sys.executable, str(REPO / "main.py"), "serve", "--ckpt_path", str(ckpt), "--port", str(port), *args]
    with log.open("wb") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=env, cwd=log.parent)
    server = Server(process, f"http://127.0.0.1:{port}", log, env.get("GEM_LIGHTNING_API_KEY"))
    deadline = time.monotonic() + STARTUP_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"serve exited with {process.returncode}:\n{log.read_text()}")
        try:
            if server.request("/health", timeout=2).body == b"ok":
                return server
        except OSError:
            pass
        time.sleep(0.5)
    server.stop()
    raise RuntimeError(f"serve was not ready after {STARTUP_S:.0f} s:\n{log.read_text()}")


def model_workers(pid: int) -> list[int]:
    """The model worker processes of the ``serve`` process ``pid``: LitServe spawns them (``spawn_main``)."""
    found = []
    for child in descendants(pid):
        try:
            if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes() and alive(child):
                found.append(child)
        except OSError:
            continue
    return found

"""A real MLflow tracking server for the tests: ``mlflow server`` on loopback, a SQLite backend store, local artifacts.

The server runs in its own process group with its store, its artifacts and its log in a temp folder,
on a port picked free on 127.0.0.1; artifacts go through it (``--serve-artifacts``, MLflow's default),
as on a team's server. Its background job runner is off (nothing here uses it; it is four more
processes). It answers ``/health`` after 15 to 30 s on a busy 2-core machine.

Use :func:`mlflow_server` (a context manager). :class:`StopServerAtEpoch` is a callback that a
``fit`` under test loads (``--trainer.callbacks+``) to take the server away at a chosen epoch.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from helpers import free_port
from lightning.pytorch import Callback, LightningModule, Trainer

STARTUP_TIMEOUT_S = 240.0


def skip_reason() -> str | None:
    """Why the MLflow tests cannot run here, or None when they can."""
    if importlib.util.find_spec("mlflow") is None or mlflow_executable() is None:
        return "mlflow is not installed (pip install 'gem-lightning[mlflow]')"
    return None


def mlflow_executable() -> str | None:
    """The ``mlflow`` command: next to this Python (the venv's), else on PATH."""
    beside_python = Path(sys.executable).parent / "mlflow"
    return str(beside_python) if beside_python.is_file() else shutil.which("mlflow")


def client_env(uri: str) -> dict[str, str]:
    """What points MLflow's client (and so the CLI) at the server ``uri``, without telemetry."""
    return {"MLFLOW_TRACKING_URI": uri, "MLFLOW_DISABLE_TELEMETRY": "true"}


@dataclass
class MlflowServer:
    """One ``mlflow server`` on loopback: where it listens; ``stop`` ends it (and its worker)."""

    root: Path
    port: int
    process: subprocess.Popen | None = None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.root / "mlflow-server.log"

    def env(self) -> dict[str, str]:
        return client_env(self.uri)

    def start(self, timeout: float = STARTUP_TIMEOUT_S) -> None:
        """Start it in its own process group and wait until ``/health`` says OK."""
        command = [
            mlflow_executable(), "server", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
            "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}", "--artifacts-destination", str(self.root / "artifacts"),
        ]  # fmt: skip
        env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false", MLFLOW_DISABLE_TELEMETRY="true")
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=self.root, env=env, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"mlflow server exited with {self.process.returncode}:\n{self.log_path.read_text()[-3000:]}")
            if self.healthy():
                return
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"mlflow server did not answer on {self.uri} within {timeout:.0f} s:\n{self.log_path.read_text()[-3000:]}")

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as answer:
                return answer.status == 200
        except OSError:
            return False

    def stop(self) -> None:
        """SIGTERM to its process group, SIGKILL if it lingers."""
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


@contextmanager
def mlflow_server(root: Path) -> Iterator[MlflowServer]:
    """A started server with its data under ``root``; stopped on exit."""
    root.mkdir(parents=True, exist_ok=True)
    server = MlflowServer(root, free_port())
    server.start()
    try:
        yield server
    finally:
        server.stop()


class StopServerAtEpoch(Callback):
    """Kills the tracking server's process group (SIGKILL, as a crash would) when training epoch ``epoch``
    starts, and waits until its port refuses connections: the server is gone mid-run."""

    def __init__(self, process_group: int, port: int, epoch: int = 1) -> None:
        self.process_group = process_group
        self.port = port
        self.epoch = epoch

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.current_epoch != self.epoch:
            return
        os.killpg(self.process_group, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
            except OSError:
                return
            time.sleep(0.1)
        raise RuntimeError(f"the tracking server on port {self.port} still answers after SIGKILL")

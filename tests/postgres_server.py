"""A real PostgreSQL server in a temporary folder, for the tests of studies that many workers share.

Debian's ``postgresql`` (``initdb`` and ``postgres`` from ``/usr/lib/postgresql/<version>/bin``)
runs in the foreground as a child of the test process, under ``nice -n 10``, on a free port on
loopback, with its Unix socket and data in the folder and ``trust`` authentication (nothing but
this machine can reach it); ``fsync`` is off (a test database need not survive a power loss).
Teardown stops exactly that process (a fast shutdown) and removes the folder. PostgreSQL refuses
to run as root: as root, the server runs as the ``postgres`` user that Debian's package creates.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from helpers import free_port

SERVER_USER = "postgres"


class ServerUnavailable(RuntimeError):
    """The server could not be started here; the message says why."""


def binaries() -> Path | None:
    """The newest folder holding ``initdb`` and ``postgres``: Debian's versioned one, else ``PATH``'s."""
    versions = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"), key=lambda path: int(path.parent.name) if path.parent.name.isdigit() else 0
    )
    for folder in [*reversed(versions), *(Path(found).parent for found in [shutil.which("initdb")] if found)]:
        if (folder / "initdb").is_file() and (folder / "postgres").is_file():
            return folder
    return None


@dataclass
class PostgresServer:
    port: int = field(default_factory=free_port)
    root: Path | None = None
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        """The URL ``--tune.storage`` takes (user ``postgres``, database ``postgres``, no password)."""
        return f"postgresql://{SERVER_USER}@127.0.0.1:{self.port}/postgres"

    def start(self, timeout: float = 120) -> PostgresServer:
        folder = binaries()
        if folder is None:
            raise ServerUnavailable("initdb and postgres not found (apt-get install postgresql)")
        run_as = self._user()
        # Not under pytest's temp folder: it is private to the test's user, and the server runs as another.
        self.root = Path(tempfile.mkdtemp(prefix="gem-postgres-"))
        if run_as:
            os.chown(self.root, run_as.pw_uid, run_as.pw_gid)
        user = {"user": run_as.pw_uid, "group": run_as.pw_gid, "extra_groups": []} if run_as else {}
        data, log = self.root / "data", self.root / "server.log"
        initdb = [folder / "initdb", "-D", data, "-U", SERVER_USER, "-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync"]
        result = subprocess.run(list(map(str, initdb)), capture_output=True, text=True, timeout=timeout, cwd=self.root, **user)
        if result.returncode != 0:
            raise ServerUnavailable(f"initdb failed: {result.stderr.strip()[-2000:]}")
        server = [folder / "postgres", "-D", data, "-p", self.port, "-k", self.root, "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"]
        with log.open("wb") as output:
            self.process = subprocess.Popen(
                ["nice", "-n", "10", *map(str, server)],
                stdout=output,
                stderr=subprocess.STDOUT,
                cwd=self.root,
                start_new_session=True,
                **user,
            )
        self._wait_for_connections(timeout, log)
        return self

    def _user(self) -> pwd.struct_passwd | None:
        if os.geteuid() != 0:
            return None
        try:
            return pwd.getpwnam(SERVER_USER)
        except KeyError:
            raise ServerUnavailable(f"running as root and there is no {SERVER_USER!r} user to run the server as") from None

    def _wait_for_connections(self, timeout: float, log: Path) -> None:
        import psycopg

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            try:
                psycopg.connect(self.url, connect_timeout=2).close()
                return
            except psycopg.OperationalError:
                time.sleep(0.5)
        tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
        raise ServerUnavailable(f"the server did not accept connections within {timeout:.0f} s: {tail}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGINT)  # PostgreSQL's fast shutdown: disconnect clients, stop
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)

"""Run ``python main.py ...`` (or a test's own main script) as a fresh process without paying for its imports each time.

Most of a failing command's time is Python importing torch, Lightning and timm (about 10 s on
2 cores); a user's mistake is found in well under a second after that. :func:`run_main` and
:func:`start_main` fork each run from a multiprocessing *forkserver* that has imported
``gem_lightning.cli.app`` once and has run nothing else (so forking it is safe). Every run is still a
process of its own: its own arguments, environment, working directory, stdout, stderr, process
group (as ``start_new_session=True`` gives) and exit status, as ``python main.py`` would have.
"""

from __future__ import annotations

import multiprocessing
import os
import runpy
import signal
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
_context: multiprocessing.context.ForkServerContext | None = None


def _forkserver() -> multiprocessing.context.ForkServerContext:
    global _context
    if _context is None:
        _context = multiprocessing.get_context("forkserver")
        _context.set_forkserver_preload(["gem_lightning.cli.app"])
    return _context


def _main_in_child(args: list[str], env: dict[str, str], cwd: str, stdout: str, stderr: str, script: str | None) -> None:
    os.setsid()  # a process group of its own: a test can signal or kill it with the ranks it launched
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    for fd, path in ((1, stdout), (2, stderr)):
        os.dup2(os.open(path, os.O_WRONLY | os.O_APPEND), fd)
    if env.get("PYTHONWARNINGS"):
        warnings.simplefilter(env["PYTHONWARNINGS"])
    sys.argv = [script or str(REPO / "main.py"), *args]  # launchers that re-run the script (DDP) find it
    import torch

    if env.get("OMP_NUM_THREADS"):  # read by OpenMP when torch was imported, in the forkserver
        torch.set_num_threads(int(env["OMP_NUM_THREADS"]))
    from gem_lightning.cli.app import main

    status = 0
    try:
        if script:
            runpy.run_path(script, run_name="__main__")
        else:
            status = main()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    raise SystemExit(status)


class WarmProcess:
    """A run started by :func:`start_main`, with the part of ``subprocess.Popen``'s interface the tests use."""

    def __init__(self, process: multiprocessing.process.BaseProcess, args: list[str]) -> None:
        self._process, self.args = process, args

    @property
    def pid(self) -> int:
        return self._process.pid

    @property
    def returncode(self) -> int | None:
        return self._process.exitcode

    def poll(self) -> int | None:
        return self._process.exitcode

    def wait(self, timeout: float | None = None) -> int:
        self._process.join(timeout)
        if self._process.exitcode is None:
            raise subprocess.TimeoutExpired(self.args, timeout)
        return self._process.exitcode

    def send_signal(self, signum: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, signum)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def kill_group(self) -> None:
        """SIGKILL the run and every process it started in its group (DDP ranks, loader workers)."""
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:  # gone, or not yet its own group
            self.kill()
        self._process.join()


def start_main(
    args: list, *, env: dict[str, str], cwd: Path | str, stdout: Path, stderr: Path | None = None, script: Path | None = None
) -> WarmProcess:
    """``subprocess.Popen([python, script or main.py, *args], stdout=..., stderr=... or STDOUT, start_new_session=True)``,
    forked warm: the output files are emptied first."""
    args = [str(arg) for arg in args]
    stderr = stderr or stdout
    for path in (stdout, stderr):
        Path(path).write_bytes(b"")
    target_args = (args, dict(env), str(cwd), str(stdout), str(stderr), str(script) if script else None)
    process = _forkserver().Process(target=_main_in_child, args=target_args)
    process.start()
    return WarmProcess(process, [str(script or "main.py"), *args])


def run_main(
    args: list, *, env: dict[str, str], cwd: Path | str, timeout: float = 900, script: Path | None = None
) -> subprocess.CompletedProcess:
    """``subprocess.run([python, script or main.py, *args], capture_output=True, text=True)``, forked warm; past
    ``timeout`` the run's process group is killed and ``subprocess.TimeoutExpired`` raised."""
    with tempfile.TemporaryDirectory() as folder:
        stdout, stderr = Path(folder, "stdout"), Path(folder, "stderr")
        process = start_main(args, env=env, cwd=cwd, stdout=stdout, stderr=stderr, script=script)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill_group()
            raise subprocess.TimeoutExpired(process.args, timeout, stdout.read_text(), stderr.read_text()) from None
        return subprocess.CompletedProcess(process.args, process.returncode, stdout.read_text(), stderr.read_text())

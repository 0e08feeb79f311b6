"""Run ``python main.py ...`` as a fresh process without paying for its imports each time.

Most of a failing command's time is Python importing torch, Lightning and timm (about 10 s on
2 cores); a user's mistake is found in well under a second after that. :func:`run_main` forks each
run from a multiprocessing *forkserver* that has imported ``gem_lightning.cli.app`` once and has run
nothing else (so forking it is safe). Every run is still a process of its own: its own arguments,
environment, working directory, stdout, stderr and exit status, as ``python main.py`` would have.
"""

from __future__ import annotations

import multiprocessing
import os
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


def _main_in_child(args: list[str], env: dict[str, str], cwd: str, stdout: str, stderr: str) -> None:
    os.setsid()  # a process group of its own, as ``start_new_session``: a timeout kills the ranks it launched too
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    for fd, path in ((1, stdout), (2, stderr)):
        os.dup2(os.open(path, os.O_WRONLY | os.O_TRUNC), fd)
    if env.get("PYTHONWARNINGS"):
        warnings.simplefilter(env["PYTHONWARNINGS"])
    sys.argv = [str(REPO / "main.py"), *args]  # launchers that re-run the script (DDP) find it
    import torch

    if env.get("OMP_NUM_THREADS"):  # read by OpenMP when torch was imported, in the forkserver
        torch.set_num_threads(int(env["OMP_NUM_THREADS"]))
    from gem_lightning.cli.app import main

    try:
        status = main()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    raise SystemExit(status)


def run_main(args: list, *, env: dict[str, str], cwd: Path | str, timeout: float = 900) -> subprocess.CompletedProcess:
    """``subprocess.run([python, main.py, *args], capture_output=True, text=True)``, forked warm."""
    args = [str(arg) for arg in args]
    with tempfile.TemporaryDirectory() as folder:
        stdout, stderr = Path(folder, "stdout"), Path(folder, "stderr")
        stdout.touch()
        stderr.touch()
        process = _forkserver().Process(target=_main_in_child, args=(args, dict(env), str(cwd), str(stdout), str(stderr)))
        process.start()
        process.join(timeout)
        if process.is_alive():
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:  # not yet its own group
                process.kill()
            process.join()
            raise subprocess.TimeoutExpired(["main.py", *args], timeout, stdout.read_text(), stderr.read_text())
        return subprocess.CompletedProcess(["main.py", *args], process.exitcode, stdout.read_text(), stderr.read_text())

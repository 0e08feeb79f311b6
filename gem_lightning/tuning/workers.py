"""``--tune.workers N``: N worker processes on this machine, each the same ``tune`` command with one worker.

The workers share the study through its storage, as the tasks of a SLURM array do. SIGTERM is
passed on to them (each stops its trial at the next step, saves, and exits cleanly); a terminal's
Ctrl-C reaches them directly, so this process only waits. On a machine with several GPUs each
worker gets its own (``CUDA_VISIBLE_DEVICES``), unless the variable is set already.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

import gem_lightning
from gem_lightning.resilience.signals import install_handler

WORKER_CODE = "import sys; from gem_lightning.cli.app import main; sys.exit(main())"
"""``main.py``'s entry point, run by the same interpreter with this package importable wherever it lives."""


def worker_command(argv: list[str], index: int) -> list[str]:
    """The command of worker ``index``: this ``tune`` command, run as one worker that leaves the outputs to this process."""
    return [
        sys.executable,
        "-c",
        WORKER_CODE,
        "tune",
        *argv,
        "--tune.workers",
        "1",
        "--tune.worker_index",
        str(index),
        "--tune.summary",
        "false",
    ]


def worker_environment(index: int) -> dict[str, str]:
    package_root = str(Path(gem_lightning.__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")])))
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if gpus > 1 and "CUDA_VISIBLE_DEVICES" not in os.environ:
        env["CUDA_VISIBLE_DEVICES"] = str(index % gpus)
    return env


def run_local_workers(argv: list[str], count: int) -> int:
    """Run ``count`` workers of the ``tune`` command ``argv`` and wait for all; the worst exit status."""
    children = [subprocess.Popen(worker_command(argv, index), env=worker_environment(index)) for index in range(count)]

    def pass_on(signum: int, frame: Any) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    previous = {signal.SIGTERM: signal.getsignal(signal.SIGTERM), signal.SIGINT: signal.getsignal(signal.SIGINT)}
    installed = install_handler(signal.SIGTERM, pass_on) and install_handler(signal.SIGINT, lambda signum, frame: None)
    try:
        statuses = [child.wait() for child in children]
    finally:
        if installed:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
    return max(status if status >= 0 else 1 for status in statuses)

"""Signals reach every process of a job; only the trainer's own process may act on them.

The loader tests run a small script in its own session (so that signalling its process group, as
SLURM signals a job step, reaches nothing else) and read which processes ran the handlers.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import REPO
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.demos.boring_classes import BoringModel

from gem_lightning.resilience import make_resumable
from gem_lightning.resilience.signals import OwnProcessHandler

LOADER_SCRIPT = textwrap.dedent('''
    """Load 2 epochs through 2 workers while the whole process group gets SIGUSR1 and SIGTERM every 50 ms,
    from another process (as slurmstepd signals a job step)."""
    import os, signal, subprocess, sys, time
    import torch
    from torch.utils.data import Dataset

    from gem_lightning.data.loader import SignalSafeDataLoader
    from gem_lightning.resilience.signals import install_handler

    method, handled = sys.argv[1], sys.argv[2]

    def record(signum, frame):
        with open(handled, "a") as file:
            file.write(f"{os.getpid()} {signum}\\n")

    class Slow(Dataset):
        def __len__(self):
            return 24
        def __getitem__(self, index):
            time.sleep(0.03)
            return torch.tensor(index)

    SIGNAL_THE_GROUP = "trap '' USR1 TERM; while :; do kill -USR1 -- -$0; kill -TERM -- -$0; sleep 0.05; done"

    if __name__ == "__main__":
        for signum in (signal.SIGUSR1, signal.SIGTERM):
            install_handler(signum, record)
        loader = SignalSafeDataLoader(Slow(), batch_size=4, num_workers=2, multiprocessing_context=method,
                                      persistent_workers=True)
        # From before the workers start: their start-up is the fragile moment with spawn.
        sender = subprocess.Popen(["bash", "-c", SIGNAL_THE_GROUP, str(os.getpgid(0))])
        seen = [int(x) for epoch in range(2) for batch in loader for x in batch]
        sender.kill()
        sender.wait()
        assert sorted(seen) == sorted(2 * list(range(24))), seen
        print("main", os.getpid(), flush=True)
''')


def run_loader_script(tmp_path: Path, method: str) -> tuple[subprocess.CompletedProcess, Path]:
    script = tmp_path / "load_under_signals.py"
    script.write_text(LOADER_SCRIPT)
    handled = tmp_path / "handled.txt"
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    proc = subprocess.Popen(
        [sys.executable, str(script), method, str(handled)],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        stdout, stderr = "", "timed out"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # the signal sender and any worker left behind
        proc.wait()
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr), handled


@pytest.mark.parametrize("method", ["fork", "spawn", pytest.param("forkserver", marks=pytest.mark.slow)])
def test_loader_workers_never_act_on_signals_sent_to_the_whole_job(tmp_path, method):
    """With torch's DataLoader and plain handlers this fails: forked workers run the parent's handlers
    (and, as they then survive SIGTERM, hang the interpreter's exit); spawned ones die of the signals."""
    result, handled = run_loader_script(tmp_path, method)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    main_pid = int(result.stdout.split()[-1])
    handlers = [line.split() for line in handled.read_text().splitlines()]
    pids = {int(pid) for pid, _ in handlers}
    assert pids == {main_pid}, f"handlers ran in {pids}, the main process is {main_pid}"
    assert {int(signum) for _, signum in handlers} == {signal.SIGUSR1, signal.SIGTERM}


def test_own_process_handler_does_nothing_in_a_forked_child(tmp_path):
    calls = tmp_path / "calls"
    handler = OwnProcessHandler(lambda signum, frame: calls.open("a").write(f"{os.getpid()}\n"))
    pid = os.fork()
    if pid == 0:
        try:
            handler(signal.SIGUSR1, None)
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    handler(signal.SIGUSR1, None)
    assert calls.read_text().split() == [str(os.getpid())]


def test_lightning_handlers_are_installed_for_the_trainer_process_only(tmp_path):
    seen = {}

    class Look(Callback):
        def on_train_start(self, trainer, pl_module):
            seen["SIGTERM"] = signal.getsignal(signal.SIGTERM)

    before = signal.getsignal(signal.SIGTERM)
    trainer = make_resumable(
        Trainer(
            default_root_dir=tmp_path,
            max_steps=1,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            callbacks=[Look()],
        )
    )
    trainer.fit(BoringModel())
    assert isinstance(seen["SIGTERM"], OwnProcessHandler) and seen["SIGTERM"].pid == os.getpid(), seen
    assert signal.getsignal(signal.SIGTERM) is before  # restored after fit


@pytest.mark.parametrize("slurm", [True, False])
def test_sigusr1_outside_training_is_recorded_under_slurm_and_fatal_elsewhere(tmp_path, slurm):
    code = (
        "import os, signal\nfrom gem_lightning.resilience.signals import listen_for_requeue_signal, take_requeue_request\n"
        "listen_for_requeue_signal()\nos.kill(os.getpid(), signal.SIGUSR1)\n"
        "assert take_requeue_request() and not take_requeue_request()\nprint('alive')\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env["PYTHONPATH"] = str(REPO)
    if slurm:
        env.update(SLURM_JOB_ID="12", SLURM_PROCID="0")
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    if slurm:
        assert result.returncode == 0 and "alive" in result.stdout, result.stderr
        assert "received outside training" in result.stderr
    else:
        assert result.returncode == -signal.SIGUSR1, (result.returncode, result.stderr)


EXIT_SCRIPT = textwrap.dedent("""
    import time
    from gem_lightning.resilience.signals import listen_for_requeue_signal
    assert listen_for_requeue_signal()
    print("listening", flush=True)
    time.sleep(0.2)
""")


def test_a_requeue_signal_while_the_interpreter_shuts_down_does_not_kill_the_task(tmp_path):
    """SLURM's ``--signal=USR1@<s>`` may land after ``fit`` has returned, while the process exits; the
    interpreter's shutdown restores SIGUSR1's default action (terminate) in place of a Python
    handler, and the task then ends "killed by SIGUSR1" (a finished job shown as FAILED). SIGUSR1
    is sent every half millisecond from the moment the process listens until it has exited."""
    script = tmp_path / "exit_under_sigusr1.py"
    script.write_text(EXIT_SCRIPT)
    env = dict(os.environ, PYTHONPATH=str(REPO), SLURM_JOB_ID="1", SLURM_PROCID="1")
    codes = []
    for _ in range(3):
        proc = subprocess.Popen([sys.executable, str(script)], env=env, stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "listening"
        while proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGUSR1)
            time.sleep(0.0005)
        codes.append(proc.wait())
    assert codes == [0, 0, 0], f"exit statuses {codes} (-{int(signal.SIGUSR1)}: killed by SIGUSR1)"

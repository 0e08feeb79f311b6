"""Surviving kills: atomic checkpoint writes, exact resume from ``last.ckpt``, SIGTERM checkpoints.

The end-to-end tests run ``fit`` in a subprocess through a small launcher (``SHIM``): main.py that,
when asked, pauses before one training batch and writes a marker file; the test then kills the run
at exactly that batch, never at a time that depends on the machine's speed.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, make_dataset
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.demos.boring_classes import BoringModel
from lightning.pytorch.plugins.io import TorchCheckpointIO
from test_distributed import TINY_MODEL, run_command, subprocess_env
from warm_cli import WarmProcess, start_main

from gem_lightning.resilience import AtomicCheckpointIO, ResumableModelCheckpoint, RNGState, SaveOnSigterm, make_resumable

SHIM = '''
"""main.py that pauses where GEM_TEST_PAUSE=<epoch>:<batch>:<marker> says."""
import json, os, sys, time
from pathlib import Path

from lightning.pytorch import Callback

import gem_lightning.cli.app as cli
from gem_lightning.resilience import SaveOnSigterm


class PauseForSignal(Callback):
    def __init__(self, spec):
        epoch, batch, self.marker = spec.split(":", 2)
        self.at = (int(epoch), int(batch))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if (trainer.current_epoch, batch_idx) != self.at or trainer.global_rank != 0:
            return
        Path(self.marker).write_text(json.dumps({"epoch": trainer.current_epoch, "global_step": trainer.global_step}))
        deadline = time.monotonic() + 120
        stoppers = [cb for cb in trainer.callbacks if isinstance(cb, SaveOnSigterm)]
        while time.monotonic() < deadline and not any(cb.requested(trainer) for cb in stoppers):
            time.sleep(0.02)


_instantiate_trainer = cli.GemCLI.instantiate_trainer


def instantiate_trainer(self, **kwargs):
    trainer = _instantiate_trainer(self, **kwargs)
    if os.environ.get("GEM_TEST_PAUSE"):
        trainer.callbacks.insert(0, PauseForSignal(os.environ["GEM_TEST_PAUSE"]))
    return trainer


cli.GemCLI.instantiate_trainer = instantiate_trainer

if __name__ == "__main__":
    cli.cli_main()
'''

BATCHES_PER_EPOCH = 6  # 30 images, 24 for training, batches of 4
EPOCHS = 3


@pytest.fixture
def resume_setup(tmp_path, isolated_cache, cpu_env):
    data = make_dataset(tmp_path / "gems", train_per_class=10, test_per_class=1)
    shim = tmp_path / "gem_main.py"
    shim.write_text(SHIM)
    env = subprocess_env(cpu_env, isolated_cache)

    def args(run: str) -> list[str]:
        return [
            "fit",
            "--data.data_dir",
            str(data),
            "--data.image_size",
            "32",
            "--data.batch_size",
            "4",
            "--data.loader.num_workers",
            "0",
            *TINY_MODEL,
            "--trainer.accelerator",
            "cpu",
            "--trainer.devices",
            "1",
            "--trainer.precision",
            "32-true",
            "--trainer.deterministic",
            "true",
            "--trainer.max_epochs",
            str(EPOCHS),
            "--trainer.enable_progress_bar",
            "false",
            "--summary.max_depth",
            "0",
            "--trainer.logger.init_args.save_dir",
            str(tmp_path / run / "logs"),
            "--checkpoint.dirpath",
            str(tmp_path / run / "checkpoints"),
        ]

    return {"tmp": tmp_path, "shim": shim, "env": env, "args": args}


def fit(setup: dict, run: str, *extra: str, timeout: float = 240) -> subprocess.CompletedProcess:
    """``python SHIM fit ...`` to the end (forked warm); fails the test with the output's tail when it fails."""
    log = setup["tmp"] / f"{run}.fit.log"
    proc = start_main([*setup["args"](run), *extra], env=setup["env"], cwd=REPO, stdout=log, script=setup["shim"])
    status = wait(proc, log, timeout)
    if status != 0:
        pytest.fail(f"{run}: fit exited with status {status}; log tail:\n{log.read_text()[-5000:]}")
    return subprocess.CompletedProcess(proc.args, status, log.read_text())


def start_paused_fit(setup: dict, run: str, epoch: int, batch: int, *extra: str) -> tuple[WarmProcess, dict, Path]:
    """Start ``fit`` (forked warm, in a process group of its own) and wait until it sits before ``batch`` of
    ``epoch``; returns the process and the marker."""
    marker = setup["tmp"] / f"{run}.paused"
    log = setup["tmp"] / f"{run}.log"
    env = dict(setup["env"], GEM_TEST_PAUSE=f"{epoch}:{batch}:{marker}")
    proc = start_main([*setup["args"](run), *extra], env=env, cwd=REPO, stdout=log, script=setup["shim"])
    deadline = time.monotonic() + 240
    while not marker.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill_group()
            pytest.fail(f"the run never reached epoch {epoch}, batch {batch}; log tail:\n{log.read_text()[-4000:]}")
        time.sleep(0.05)
    return proc, json.loads(marker.read_text()), log


def wait(proc: subprocess.Popen | WarmProcess, log: Path, timeout: float = 120) -> int:
    """``proc``'s exit status; past ``timeout`` its process group is killed and the test fails with the log's tail."""
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        pytest.fail(f"{log.name}: the run did not stop within {timeout} s; log tail:\n{log.read_text()[-4000:]}")


def assert_same_training_state(resumed: dict, reference: dict) -> None:
    """Same step, weights and Adam moments, to float tolerance (in practice bit for bit)."""
    assert (resumed["epoch"], resumed["global_step"]) == (reference["epoch"], reference["global_step"])
    for name, expected in reference["state_dict"].items():
        torch.testing.assert_close(
            resumed["state_dict"][name],
            expected,
            rtol=0,
            atol=1e-6,
            msg=lambda m, name=name: f"{name} differs from the uninterrupted run: {m}",
        )
    for expected, actual in zip(reference["optimizer_states"][0]["state"].values(), resumed["optimizer_states"][0]["state"].values()):
        torch.testing.assert_close(actual["exp_avg"], expected["exp_avg"], rtol=0, atol=1e-6)
        torch.testing.assert_close(actual["exp_avg_sq"], expected["exp_avg_sq"], rtol=0, atol=1e-6)


def load(path: Path) -> dict:
    # weights_only: what `validate`/`test`/`predict` (and Lightning's resume by default) use
    return torch.load(path, map_location="cpu", weights_only=True)


# End to end ----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_run_killed_mid_epoch_resumes_to_the_weights_of_an_uninterrupted_run(resume_setup):
    """SIGKILL in the middle of epoch 1; resume replays epoch 1 from the end-of-epoch-0 checkpoint."""
    fit(resume_setup, "straight")
    reference = load(resume_setup["tmp"] / "straight" / "checkpoints" / "last.ckpt")
    assert (reference["epoch"], reference["global_step"]) == (EPOCHS - 1, EPOCHS * BATCHES_PER_EPOCH)

    proc, paused, log = start_paused_fit(resume_setup, "killed", epoch=1, batch=2)
    last = resume_setup["tmp"] / "killed" / "checkpoints" / "last.ckpt"
    at_kill = load(last)  # complete and readable while the run is alive
    os.killpg(proc.pid, signal.SIGKILL)
    assert wait(proc, log) == -signal.SIGKILL
    assert paused == {"epoch": 1, "global_step": BATCHES_PER_EPOCH + 2}
    assert (at_kill["epoch"], at_kill["global_step"]) == (0, BATCHES_PER_EPOCH), "the end-of-epoch-0 checkpoint"

    fit(resume_setup, "killed", "--ckpt_path", "last")
    assert_same_training_state(load(last), reference)
    leftovers = [p.name for p in last.parent.iterdir() if p.suffix != ".ckpt"]
    assert not leftovers, f"temporary files left in the checkpoint folder: {leftovers}"


@pytest.mark.slow
def test_sigterm_saves_a_resumable_checkpoint_at_the_current_step_and_exits(resume_setup):
    proc, paused, log = start_paused_fit(resume_setup, "terminated", epoch=1, batch=2)
    os.killpg(proc.pid, signal.SIGTERM)
    status = wait(proc, log, timeout=60)
    output = log.read_text()
    assert status == 0, f"Lightning stops on SIGTERM with SystemExit (status 0), got {status}:\n{output[-3000:]}"
    assert "Stopping on a signal: saved a checkpoint" in output, output[-3000:]

    last = resume_setup["tmp"] / "terminated" / "checkpoints" / "last.ckpt"
    saved = load(last)
    # The batch during which the signal arrived is finished, then the run stops.
    assert (saved["epoch"], saved["global_step"]) == (1, paused["global_step"] + 1)
    assert saved["loops"]["fit_loop"]["epoch_loop.batch_progress"]["current"]["processed"] == 3
    assert "RNGState" in saved["callbacks"]

    fit(resume_setup, "terminated", "--ckpt_path", "last")
    finished = load(last)
    assert (finished["epoch"], finished["global_step"]) == (EPOCHS - 1, EPOCHS * BATCHES_PER_EPOCH), (
        "the resumed run finishes epoch 1 with the remaining steps and trains the rest"
    )


@pytest.mark.slow
def test_ddp_sigterm_stops_every_rank_and_epoch_checkpoints_replay_exactly(resume_setup):
    """Two processes. SIGTERM while rank 0 waits before a batch and rank 1 waits in the gradient
    all-reduce (Lightning's own handler would broadcast from inside the signal handler and crash
    gloo here); then a resume from the end-of-epoch-0 checkpoint replays epoch 1 exactly, which
    needs each rank's own random generators (they differ between ranks) and, with loader workers
    (fresh ones each epoch, started from the forkserver), the resumed epoch's shuffle (Lightning
    creates that iterator before it sets the sampler's epoch)."""
    setup = dict(resume_setup, env=dict(resume_setup["env"], OMP_NUM_THREADS="1"))
    ddp = [
        "--trainer.devices",
        "2",
        "--trainer.strategy",
        "ddp",
        "--trainer.max_epochs",
        "2",
        "--data.loader.num_workers",
        "1",
        "--data.loader.persistent_workers",
        "false",
    ]
    steps = 3  # 24 training images over 2 ranks: 3 batches of 4 per epoch
    fit(setup, "ddp-straight", *ddp)
    reference = load(setup["tmp"] / "ddp-straight" / "checkpoints" / "last.ckpt")
    assert reference["global_step"] == 2 * steps

    proc, paused, log = start_paused_fit(setup, "ddp", 1, 1, *ddp)
    os.killpg(proc.pid, signal.SIGTERM)  # srun and torchrun signal every rank, as here
    status = wait(proc, log, timeout=60)
    output = log.read_text()
    assert status == 0, f"exit status {status}:\n{output[-3000:]}"
    assert output.count("Stopping on a signal: saved a checkpoint") == 1, output[-3000:]
    checkpoints = setup["tmp"] / "ddp" / "checkpoints"
    saved = load(checkpoints / "last.ckpt")
    assert paused["global_step"] == steps + 1 and (saved["epoch"], saved["global_step"]) == (1, steps + 2)
    assert len(saved["callbacks"]["RNGState"]["ranks"]) == 2, "one set of generator states per rank"

    epoch_end = checkpoints / "best-000.ckpt"  # the first validation is always the best so far
    assert load(epoch_end)["global_step"] == steps
    fit(setup, "ddp", *ddp, "--ckpt_path", str(epoch_end))
    # best-000.ckpt was written before last.ckpt, so its ModelCheckpoint state names no last file and
    # the resumed run writes last-v1.ckpt: take the newest, as ckpt_path="last" does.
    newest = max(checkpoints.glob("last*.ckpt"), key=lambda path: path.stat().st_mtime_ns)
    assert_same_training_state(load(newest), reference)


FAKE_SCONTROL = """#!/bin/sh
echo "$@" >> "$SCONTROL_CALLS"
"""


@pytest.mark.slow
def test_slurm_requeue_signal_under_ddp_saves_on_every_rank_then_requeues(resume_setup):
    """Two tasks started as ``srun`` would (SLURM_PROCID 0 and 1): SIGUSR1, the ``--signal=SIGUSR1@90``
    of scripts/slurm_fit.sh, saves last.ckpt at the current step and then rank 0 requeues the job."""
    tmp = resume_setup["tmp"]
    bin_dir = tmp / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text(FAKE_SCONTROL)
    (bin_dir / "scontrol").chmod(0o755)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    marker = tmp / "slurm.paused"
    common = dict(
        resume_setup["env"],
        OMP_NUM_THREADS="1",
        PATH=f"{bin_dir}:{os.environ['PATH']}",
        SCONTROL_CALLS=str(tmp / "calls"),
        SLURM_NTASKS="2",
        SLURM_NTASKS_PER_NODE="2",
        SLURM_NNODES="1",
        SLURM_NODEID="0",
        SLURM_JOB_ID="4242",
        SLURM_JOB_NAME="gem-fit",
        SLURM_NODELIST="localhost",
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        GEM_TEST_PAUSE=f"1:1:{marker}",
    )
    args = [
        *resume_setup["args"]("slurm"),
        "--trainer.devices",
        "2",
        "--trainer.num_nodes",
        "1",
        "--trainer.strategy",
        "ddp",
        "--trainer.max_epochs",
        "2",
    ]
    tasks, logs = [], []
    for rank in (0, 1):
        logs.append(tmp / f"slurm-task{rank}.log")
        env = dict(common, SLURM_PROCID=str(rank), SLURM_LOCALID=str(rank))
        tasks.append(start_main(args, env=env, cwd=REPO, stdout=logs[-1], script=resume_setup["shim"]))
    try:
        deadline = time.monotonic() + 240
        while not marker.exists():
            if any(task.poll() is not None for task in tasks) or time.monotonic() > deadline:
                pytest.fail("the tasks never reached the pause:\n" + "\n".join(log.read_text()[-2500:] for log in logs))
            time.sleep(0.05)
        for task in tasks:  # SLURM signals every task of the step
            os.kill(task.pid, signal.SIGUSR1)
        statuses = [wait(task, log, timeout=60) for task, log in zip(tasks, logs)]
    finally:
        for task in tasks:
            if task.poll() is None:
                task.kill_group()
    output = logs[0].read_text()
    assert statuses == [0, 0], f"{statuses}:\n{output[-3000:]}\n{logs[1].read_text()[-2000:]}"
    assert (tmp / "calls").read_text().split() == ["requeue", "4242"], "rank 0 requeues the job once"
    saved = load(tmp / "slurm" / "checkpoints" / "last.ckpt")
    paused = json.loads(marker.read_text())
    assert (saved["epoch"], saved["global_step"]) == (1, paused["global_step"] + 1)
    assert "Requeued SLURM job 4242" in output, output[-3000:]


# Atomic checkpoint writes ----------------------------------------------------------------------------


def test_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    target = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"global_step": 1, "weights": torch.arange(1000.0)}, target)

    def interrupted_save(obj, file, *args, **kwargs):
        file.write(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt  # a BaseException, like the SystemExit of a signal handler

    monkeypatch.setattr(torch, "save", interrupted_save)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"global_step": 2, "weights": torch.zeros(1000)}, target)
    monkeypatch.undo()
    previous = load(target)
    assert previous["global_step"] == 1 and torch.equal(previous["weights"], torch.arange(1000.0))
    assert [p.name for p in target.parent.iterdir()] == ["last.ckpt"], "the temporary file is removed"


KILLED_WRITE = """
import os, signal, sys, torch
from gem_lightning.resilience import AtomicCheckpointIO

target = sys.argv[1]
real_save = torch.save
def save_then_die(obj, file, *args, **kwargs):
    real_save(obj, file, *args, **kwargs)
    file.flush()
    file.truncate(file.tell() // 2)          # half of the new checkpoint is on disk...
    os.kill(os.getpid(), signal.SIGKILL)     # ...when the process dies
torch.save = save_then_die
AtomicCheckpointIO().save_checkpoint({"global_step": 2, "weights": torch.zeros(100_000)}, target)
"""


def test_process_killed_while_writing_leaves_the_previous_checkpoint(tmp_path, cpu_env, isolated_cache):
    target = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"global_step": 1, "weights": torch.arange(100_000.0)}, target)
    result = run_command(
        [sys.executable, "-c", KILLED_WRITE, str(target)], subprocess_env(cpu_env, isolated_cache), timeout=120, check=False
    )
    assert result.returncode == -signal.SIGKILL, result.stdout[-2000:]
    assert load(target)["global_step"] == 1, "last.ckpt is still the previous, complete checkpoint"
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "last.ckpt"]
    assert len(leftovers) == 1 and leftovers[0].startswith(".last.ckpt.") and leftovers[0].endswith(".tmp"), leftovers


def test_atomic_write_goes_through_a_synced_temporary_file_in_the_target_folder(tmp_path, monkeypatch):
    """Lightning's own TorchCheckpointIO writes the temporary file in the system temp folder; when that
    is another filesystem than the checkpoints (tmpfs /tmp, a shared volume), its final move is a copy
    into last.ckpt, which a kill can leave truncated."""
    replaced, synced = [], []
    real_replace, real_fsync = os.replace, os.fsync
    monkeypatch.setattr(os, "replace", lambda src, dst: (replaced.append((Path(src), Path(dst))), real_replace(src, dst)))
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    old_umask = os.umask(0o022)
    try:
        AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": torch.ones(3)}}, tmp_path / "a" / "b.ckpt")
    finally:
        os.umask(old_umask)
    path = tmp_path / "a" / "b.ckpt"
    ((source, destination),) = replaced
    assert destination == path and source.parent == path.parent and source.name.startswith(".b.ckpt.")
    assert len(synced) == 2, "the file, then the folder that now names it"
    assert oct(path.stat().st_mode & 0o777) == oct(0o644)
    assert torch.equal(load(path)["state_dict"]["w"], torch.ones(3))
    with pytest.raises(TypeError, match="storage_options"):
        AtomicCheckpointIO().save_checkpoint({}, path, storage_options={"x": 1})


# Installation and the pieces in process ------------------------------------------------------------


def test_make_resumable_installs_each_piece_once(tmp_path):
    trainer = Trainer(
        default_root_dir=tmp_path,
        accelerator="cpu",
        devices=1,
        logger=False,
        callbacks=[ModelCheckpoint(dirpath=tmp_path)],
        enable_progress_bar=False,
    )
    assert make_resumable(make_resumable(trainer)) is trainer
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)
    kinds = [type(cb) for cb in trainer.callbacks]
    assert kinds.count(RNGState) == 1 and kinds.count(SaveOnSigterm) == 1
    assert kinds.index(SaveOnSigterm) < kinds.index(ModelCheckpoint), "checkpoint callbacks stay last"

    class CustomIO(TorchCheckpointIO):
        pass

    custom = Trainer(default_root_dir=tmp_path, accelerator="cpu", devices=1, logger=False, plugins=[CustomIO()])
    assert isinstance(make_resumable(custom).strategy.checkpoint_io, CustomIO), "a user's checkpoint IO is kept"


class ConstantMetricModel(BoringModel):
    """A validation metric that never improves after the first epoch."""

    def validation_step(self, batch, batch_idx):
        self.log("score", 1.0)
        return super().validation_step(batch, batch_idx)


def test_last_checkpoint_is_the_latest_epoch_even_when_the_monitor_does_not_improve(tmp_path):
    callback = ResumableModelCheckpoint(dirpath=tmp_path, monitor="score", mode="max", save_last=True, filename="best")
    trainer = Trainer(
        default_root_dir=tmp_path,
        accelerator="cpu",
        devices=1,
        max_epochs=3,
        limit_train_batches=2,
        limit_val_batches=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[callback],
    )
    trainer.fit(ConstantMetricModel())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.ckpt", "last.ckpt"]
    assert load(tmp_path / "best.ckpt")["global_step"] == 2, "the best is from epoch 0"
    assert load(tmp_path / "last.ckpt")["global_step"] == 6, "last.ckpt follows every epoch"
    assert callback.state_key == ModelCheckpoint(monitor="score", mode="max").state_key, "checkpoints stay interchangeable"


def test_rng_states_survive_a_weights_only_checkpoint(tmp_path):
    callback = RNGState()  # outside a Trainer: one process, one set of states
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    torch.save({"rng": callback.state_dict()}, tmp_path / "rng.ckpt")
    expected = (torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)])
    torch.manual_seed(9), np.random.seed(9), random.seed(9)

    callback.load_state_dict(load(tmp_path / "rng.ckpt")["rng"])
    torch.testing.assert_close(torch.rand(3), expected[0], rtol=0, atol=0)
    np.testing.assert_array_equal(np.random.rand(3), expected[1])
    assert [random.random() for _ in range(3)] == expected[2]

"""``scripts/slurm_fit.sh`` on a real one-node SLURM cluster (``tests/slurm_cluster.py``): 2 CPU tasks over gloo.

Each test submits the script with ``sbatch`` as a user would, signals it with ``scancel`` as SLURM
does, and reads the job's state and restarts from ``scontrol show job`` and the run's files. Jobs
that must be signalled at a known moment run ``tests/pausing_main.py`` (``main.py`` that holds
still there until the signal arrives) through the script's ``PYTHON`` variable.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO, make_dataset, sigkill_all
from slurm_cluster import ClusterUnavailable, SlurmCluster
from test_distributed import TINY_MODEL, clean_launch_env

pytestmark = [pytest.mark.slow, pytest.mark.cluster]

EPOCHS = 2
BATCHES_PER_EPOCH = 3  # 24 training images over 2 tasks, batches of 4
JOB_TIMEOUT = 600  # s: a generous bound for one job on 2 shared cores
TRIES: list[dict] = []  # what each signalled allocation did, printed at the end (pytest -s)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm"))
    try:
        cluster.start()
    except ClusterUnavailable as error:
        cluster.stop()
        pytest.skip(f"cannot start a local SLURM cluster: {error}")
    yield cluster
    cluster.stop()
    for line in TRIES:
        print(json.dumps(line))


@pytest.fixture(scope="module")
def jobs(cluster, tmp_path_factory):
    root = tmp_path_factory.mktemp("jobs")
    data = make_dataset(root / "gems", train_per_class=10, test_per_class=1)
    pausing = root / "python-with-pauses"  # the script runs "$PYTHON" main.py ...: swap main.py for the pausing one
    pausing.write_text(f'#!/bin/bash\nshift\nexec {sys.executable} {REPO / "tests" / "pausing_main.py"} "$@"\n')
    pausing.chmod(0o755)
    base_env = clean_launch_env(dict(os.environ))
    base_env.update(
        PYTHONPATH=str(REPO),
        PYTHONWARNINGS="ignore",
        GEM_LIGHTNING_CACHE=str(root / "cache"),
        CONFIG="configs/quickstart.yaml",
        DDP_CONFIG="configs/ddp_cpu.yaml",
        OMP_NUM_THREADS="1",
    )
    return Jobs(cluster, root, data, base_env, pausing)


class Jobs:
    def __init__(self, cluster: SlurmCluster, root: Path, data: Path, env: dict[str, str], pausing: Path) -> None:
        self.cluster, self.root, self.data, self.env, self.pausing = cluster, root, data, env, pausing

    def submit(self, run: str, *, epochs: int = EPOCHS, pauses: dict | None = None, sbatch: tuple = (), fit: tuple = ()) -> int:
        run_dir = self.root / run
        (run_dir / "markers").mkdir(parents=True, exist_ok=True)
        env = dict(
            self.env,
            RUN_DIR=str(run_dir),
            PYTHON=str(self.pausing) if pauses else sys.executable,
            GEM_TEST_PAUSES=json.dumps(pauses or {}),
            GEM_TEST_MARKERS=str(run_dir / "markers"),
        )
        args = [
            "--nodes=1",
            "--ntasks-per-node=2",
            "--gres=none",
            "--cpus-per-task=1",
            f"--job-name={run}",
            f"--output={run_dir}/slurm-%j.out",
            *sbatch,
            REPO / "scripts" / "slurm_fit.sh",
            "--data.data_dir",
            self.data,
            "--data.generate",
            "null",
            "--data.image_size",
            "32",
            "--data.batch_size",
            "4",
            "--data.loader.num_workers",
            "1",
            *TINY_MODEL,
            "--trainer.max_epochs",
            str(epochs),
            "--trainer.deterministic",
            "true",
            "--data.loader.persistent_workers",
            "false",
            "--trainer.enable_progress_bar",
            "false",
            "--trainer.log_every_n_steps",
            "1",
            "--summary.max_depth",
            "0",
            "--trainer.logger.init_args.save_dir",
            run_dir / "logs",
            *fit,
        ]
        return self.cluster.sbatch(args, env, cwd=REPO)

    def output(self, run: str) -> str:
        return "\n".join(path.read_text(errors="replace") for path in sorted((self.root / run).glob("slurm-*.out")))

    def wait_for_marker(self, run: str, name: str, job_id: int, timeout: float = JOB_TIMEOUT) -> Path:
        marker = self.root / run / "markers" / name
        deadline = time.monotonic() + timeout
        while not marker.exists():
            info = self.cluster.job(job_id)
            if info.get("JobState") in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT") or time.monotonic() > deadline:
                pytest.fail(f"job {job_id} never reached {name} ({info.get('JobState')}); output:\n{self.output(run)[-4000:]}")
            time.sleep(0.5)
        time.sleep(0.5)  # the ranks are now inside the paused step
        return marker

    def checkpoint(self, run: str, name: str = "last.ckpt") -> dict:
        return torch.load(self.root / run / "checkpoints" / name, map_location="cpu", weights_only=False)


def finished(jobs: Jobs, run: str, job_id: int, state: str = "COMPLETED", timeout: float = JOB_TIMEOUT) -> dict:
    info = jobs.cluster.wait_finished(job_id, timeout)
    assert info["JobState"] == state, f"{info['JobState']} ({info.get('Reason')}); output:\n{jobs.output(run)[-5000:]}"
    return info


def completed_epochs(jobs: Jobs, run: str) -> int:
    return jobs.checkpoint(run)["epoch"] + 1


def record(scenario: str, job: int, info: dict, started: float, **extra) -> None:
    TRIES.append(
        {
            "scenario": scenario,
            "job": job,
            "state": info.get("JobState"),
            "restarts": info.get("Restarts"),
            "wall_s": round(time.monotonic() - started),
            **extra,
        }
    )


def kill_every_process_of(jobs: Jobs, job: int) -> None:
    """SIGKILL the batch script and every task at once (``scontrol listpids`` names them). Not
    ``scancel --signal=KILL``: SLURM then stops the tasks with SIGTERM first, and they save."""
    rows = [line.split() for line in jobs.cluster.command(["scontrol", "listpids", str(job)]).stdout.splitlines()[1:]]
    sigkill_all({int(row[0]) for row in rows if row and row[0].isdigit()})


def weights(checkpoint: dict) -> dict[str, torch.Tensor]:
    return {key: value for key, value in checkpoint["state_dict"].items() if value.is_floating_point()}


@pytest.fixture(scope="module")
def plain_job(jobs):
    """One uninterrupted job: the reference for the others."""
    started = time.monotonic()
    job = jobs.submit("plain")
    info = finished(jobs, "plain", job)
    record("plain job", job, info, started, epochs=completed_epochs(jobs, "plain"))
    return job, info


def test_a_plain_job_completes_writing_checkpoints_config_and_logs_once(jobs, plain_job):
    job, info = plain_job
    assert info["Restarts"] == "0" and info["ExitCode"] == "0:0", info
    run = jobs.root / "plain"
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert "last.ckpt" in names and len([n for n in names if n.startswith("best-")]) == 1, names
    assert not [n for n in names if n.endswith(".tmp") or "-v1" in n], names
    assert len(list((run / "logs").rglob("config.yaml"))) == 1 and len(list((run / "logs").rglob("metrics.csv"))) == 1
    saved = jobs.checkpoint("plain")
    assert saved["epoch"] == EPOCHS - 1 and saved["global_step"] == EPOCHS * BATCHES_PER_EPOCH
    output = jobs.output("plain")
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in output and "distributed_backend=gloo" in output, output[-3000:]


SIGUSR1_MOMENTS = {  # SLURM restart count -> where the job is when SIGUSR1 arrives
    "0": {"at": "train", "epoch": 0, "batch": 1},  # during a training step
    "1": {"at": "val", "epoch": 1, "batch": 0},  # during validation
    "2": {"at": "checkpoint", "epoch": 2},  # while the epoch checkpoint is being written
    "3": {"at": "after_fit"},  # just after fit has returned
}
SIGUSR1_EPOCHS = 4
STEP_AT_REQUEUE = {"0": 2, "1": 6, "2": 9}  # global step of the checkpoint each requeue resumes from


def test_sigusr1_at_four_moments_requeues_each_time_and_the_job_completes(jobs):
    """One job, signalled once per allocation (persistent loader workers alive each time): every signal
    during fit saves, requeues (same job id, Restarts + 1) and the next allocation resumes from that
    step; the signal after fit is ignored and the job completes."""
    started = time.monotonic()
    job = jobs.submit("usr1", epochs=SIGUSR1_EPOCHS, pauses=SIGUSR1_MOMENTS, fit=("--data.loader.persistent_workers", "true"))
    for restart, moment in SIGUSR1_MOMENTS.items():
        ranks = (0, 1) if moment["at"] == "after_fit" else (0,)
        for rank in ranks:
            jobs.wait_for_marker("usr1", f"{restart}-{moment['at']}-{rank}.json", job)
        signalled = time.monotonic()
        jobs.cluster.command(["scancel", "--signal=USR1", str(job)])
        if restart in STEP_AT_REQUEUE:
            info = jobs.cluster.wait_until(
                job, lambda i, restart=restart: i["Restarts"] == str(int(restart) + 1), JOB_TIMEOUT, f"Restarts={int(restart) + 1}"
            )
            saved = jobs.checkpoint("usr1")
            record(
                "SIGUSR1",
                job,
                info,
                signalled,
                moment=moment["at"],
                allocation=int(restart),
                resumes_from_step=saved["global_step"],
                epoch=saved["epoch"],
            )
            assert saved["global_step"] == STEP_AT_REQUEUE[restart], (moment, saved["global_step"])
    info = finished(jobs, "usr1", job)
    saved = jobs.checkpoint("usr1")
    record("SIGUSR1", job, info, signalled, moment="after_fit (ignored)", epochs=saved["epoch"] + 1)
    assert info["Restarts"] == str(len(STEP_AT_REQUEUE)) and info["ExitCode"] == "0:0", info
    assert saved["epoch"] == SIGUSR1_EPOCHS - 1 and saved["global_step"] == SIGUSR1_EPOCHS * BATCHES_PER_EPOCH
    output = jobs.output("usr1")
    assert output.count("Resuming from") == len(STEP_AT_REQUEUE), output[-4000:]
    assert "User defined signal" not in output and "Traceback" not in output, output[-4000:]
    record("SIGUSR1 job total", job, info, started)


TIME_LIMIT_EPOCHS = 3
SLOW_STEP_S = 12  # 9 steps of 12 s more (until the signal): the first allocation cannot finish before it, at most 60 s in


def test_a_real_time_limit_requeues_the_job_before_the_kill_and_it_completes(jobs):
    """``--time=2 --signal=USR1@60``: SLURM itself sends SIGUSR1 a minute before the limit (its
    periodic check, every 30 s, sends it 30 to 60 s after the start). The first allocation's steps
    are slowed (``SLOW_STEP_S`` each, until the signal) so that it cannot finish in time on any
    machine; the next allocation trains the rest at full speed. (On a starved machine the signal may
    come before training starts: the job then saves and requeues after its first batch, which is
    progress too.)"""
    started = time.monotonic()
    job = jobs.submit(
        "time-limit",
        epochs=TIME_LIMIT_EPOCHS,
        pauses={"0": {"at": "slow", "seconds": SLOW_STEP_S}},
        sbatch=("--time=2", "--signal=USR1@60"),
    )
    info = jobs.cluster.wait_until(
        job, lambda i: i["Restarts"] != "0" or i["JobState"] in ("COMPLETED", "FAILED", "TIMEOUT", "CANCELLED"), JOB_TIMEOUT, "a requeue"
    )
    saved = jobs.checkpoint("time-limit")
    record("time limit", job, info, started, allocation=0, resumes_from_step=saved["global_step"])
    assert info["Restarts"] == "1", f"{info}; output:\n{jobs.output('time-limit')[-4000:]}"
    assert 0 < saved["global_step"] < TIME_LIMIT_EPOCHS * BATCHES_PER_EPOCH
    assert "DUE TO TIME LIMIT" not in jobs.output("time-limit"), "the time limit was reached before the requeue"
    info = finished(jobs, "time-limit", job)
    saved = jobs.checkpoint("time-limit")
    record("time limit", job, info, started, allocation=int(info["Restarts"]), epochs=saved["epoch"] + 1)
    assert saved["epoch"] == TIME_LIMIT_EPOCHS - 1 and saved["global_step"] == TIME_LIMIT_EPOCHS * BATCHES_PER_EPOCH
    assert int(info["Restarts"]) >= 1 and info["TimeLimit"] == "00:02:00", info
    assert "DUE TO TIME LIMIT" not in jobs.output("time-limit")


def test_sigterm_saves_last_and_a_resubmission_resumes_from_it(jobs):
    started = time.monotonic()
    job = jobs.submit("term", pauses={"0": {"at": "train", "epoch": 1, "batch": 1}})
    jobs.wait_for_marker("term", "0-train-0.json", job)
    jobs.cluster.command(["scancel", str(job)])  # SIGTERM to every process of the job, SIGKILL 30 s later
    info = finished(jobs, "term", job, state="CANCELLED")
    saved = jobs.checkpoint("term")
    record("SIGTERM (scancel)", job, info, started, saved_step=saved["global_step"])
    output = jobs.output("term")
    assert saved["global_step"] == BATCHES_PER_EPOCH + 2, saved["global_step"]
    assert "Stopping on a signal: saved a checkpoint at global step 5" in output, output[-4000:]
    assert "Traceback" not in output, output[-4000:]

    started = time.monotonic()
    again = jobs.submit("term")
    info = finished(jobs, "term", again)
    record("SIGTERM resubmission", again, info, started, epochs=completed_epochs(jobs, "term"))
    assert "Resuming from" in jobs.output("term") and completed_epochs(jobs, "term") == EPOCHS


def test_a_sigkilled_step_resumes_from_the_epoch_boundary_to_the_uninterrupted_weights(jobs, plain_job):
    started = time.monotonic()
    job = jobs.submit("kill", pauses={"0": {"at": "train", "epoch": 1, "batch": 1}})
    jobs.wait_for_marker("kill", "0-train-0.json", job)
    kill_every_process_of(jobs, job)  # as a node failure would: no handler runs anywhere
    info = finished(jobs, "kill", job, state="FAILED")
    saved = jobs.checkpoint("kill")
    record("SIGKILL of the step", job, info, started, resumes_from_step=saved["global_step"])
    assert saved["global_step"] == BATCHES_PER_EPOCH and saved["epoch"] == 0  # the epoch-0 checkpoint

    started = time.monotonic()
    again = jobs.submit("kill")
    info = finished(jobs, "kill", again)
    record("SIGKILL resubmission", again, info, started, epochs=completed_epochs(jobs, "kill"))
    resumed, reference = weights(jobs.checkpoint("kill")), weights(jobs.checkpoint("plain"))
    assert resumed.keys() == reference.keys()
    different = [key for key in reference if not torch.equal(resumed[key], reference[key])]
    assert not different, f"weights differ from the uninterrupted job's: {different}"

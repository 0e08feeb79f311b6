"""``main.py tune``: the space file, the trials through the command line, the outputs, bad input, signals.

The studies here are tiny (a two-block network on 32 px colour squares, 2 epochs a trial) and live in
the default SQLite storage; PostgreSQL, a SIGKILLed worker and a SLURM array are in ``test_tune_cluster.py``.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
import yaml
from conftest import REPO, make_dataset
from helpers import TINY_MODEL, free_port

from gem_lightning.cli.app import cli_main, parse_fit_options
from gem_lightning.cli.commands.tune import parse_duration
from gem_lightning.errors import UserInputError
from gem_lightning.tuning.reporting import ReportToTrial
from gem_lightning.tuning.space import nested, read_space
from gem_lightning.tuning.study import best_trial, make_pruner
from gem_lightning.tuning.trial_command import check_space

SPACE = {
    "model.optimizer.init_args.lr": {"log_uniform": ["1e-4", 1.0e-1]},
    "model.network.init_args.channels": {"choice": [[8, 16], [4, 8]]},
}


def write_space(path: Path, content) -> Path:
    path.write_text(yaml.safe_dump(content) if not isinstance(content, str) else content)
    return path


def fit_options(data: Path) -> list[str]:
    """The tiny recipe every study here tunes: the quickstart's config, 32 px, 2 epochs, the tiny network
    (its channels left to the space)."""
    return ["--config", str(REPO / "configs" / "quickstart.yaml"), "--data.data_dir", str(data), "--data.generate", "null",
            "--data.image_size", "32", "--data.batch_size", "8", "--data.loader.num_workers", "0", *TINY_MODEL[2:],
            "--trainer.max_epochs", "2", "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false",
            "--summary.max_depth", "0"]  # fmt: skip


def study_of(folder: Path, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{folder / name / 'study.db'}")


def states(study: optuna.Study) -> list[str]:
    return [trial.state.name for trial in sorted(study.trials, key=lambda trial: trial.number)]


# The space file -----------------------------------------------------------------------------------


def test_the_space_file_samples_each_distribution_and_its_values_become_options_and_a_config(tmp_path):
    space = read_space(
        write_space(tmp_path / "s.yaml", {**SPACE, "trainer.max_epochs": {"int": [1, 3]}, "data.augment.zoom": {"uniform": [0, 0.2]}})
    )
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1)).ask()
    values = space.sample(trial)
    assert 1e-4 <= values["model.optimizer.init_args.lr"] <= 0.1  # "1e-4" (text to PyYAML) is read as a number
    assert values["model.network.init_args.channels"] in ([8, 16], [4, 8]) and isinstance(values["trainer.max_epochs"], int)
    assert space.decode(trial.params) == values
    assert nested({"model.optimizer.init_args.lr": 0.01, "model.label_smoothing": 0.1}) == {
        "model": {"optimizer": {"init_args": {"lr": 0.01}}, "label_smoothing": 0.1}
    }


@pytest.mark.parametrize(
    ("content", "says"),
    [
        ("", "is empty: name at least one setting"),
        ("{}", "is empty"),
        ("- a\n- b\n", "must map settings to distributions"),
        ("model.optimizer.init_args.lr: {normal: [0, 1]}", "model.optimizer.init_args.lr: expected one of {uniform"),
        ("model.optimizer.init_args.lr: {uniform: [0.1, 0.01]}", "empty or reversed"),
        ("model.optimizer.init_args.lr: {log_uniform: [0, 0.1]}", "log_uniform needs low > 0"),
        ("trainer.max_epochs: {int: [1.5, 3]}", "int needs two whole numbers"),
        ("data.image_size: {choice: []}", "choice needs a non-empty list"),
        ("model.optimizer.init_args.lr: {uniform: [a, 1]}", "needs two finite numbers"),
        ("checkpoint.dirpath: {choice: [a, b]}", "tune sets this for every trial"),
        ("a: [b", "is not valid YAML"),
    ],
)
def test_a_mistake_in_the_space_file_is_one_line_naming_it(tmp_path, content, says):
    path = write_space(tmp_path / "space.yaml", content)
    with pytest.raises(UserInputError, match=r"space\.yaml") as error:
        read_space(path)
    assert says in str(error.value) and "\n" not in str(error.value)


def test_a_missing_space_file_is_named(tmp_path):
    with pytest.raises(UserInputError, match="nope.yaml'?: no such file"):
        read_space(tmp_path / "nope.yaml")


def checked(space_file: Path, options: list[str]):
    """``check_space`` with the options read by ``fit``'s parser, as ``tune`` calls it."""
    fit = parse_fit_options(options)
    return check_space(read_space(space_file), options, fit.config, fit.parser)


def test_the_shipped_spaces_are_settings_of_their_configs():
    for space_file, configs in (
        ("gemstones_finetune.yaml", ["gemstones_finetune.yaml"]),
        ("time_to_accuracy.yaml", ["gemstones_finetune.yaml", "gemstones_fast.yaml"]),
    ):
        options = [option for config in configs for option in ("--config", str(REPO / "configs" / config))]
        checked(REPO / "configs" / "tune" / space_file, options)


def test_the_space_is_checked_against_fits_parser(tmp_path):
    options = ["--config", str(REPO / "configs" / "quickstart.yaml")]
    command = checked(write_space(tmp_path / "s.yaml", SPACE), options)
    assert command.logger_save_dir
    with pytest.raises(
        UserInputError,
        match=r"s2\.yaml: model\.optimizer\.init_args\.lrr is not a `fit` setting \(did you mean model\.optimizer\.init_args\.lr\?\)",
    ):
        checked(write_space(tmp_path / "s2.yaml", {"model.optimizer.init_args.lrr": {"uniform": [0.1, 0.2]}}), options)
    with pytest.raises(UserInputError, match=r"s3\.yaml: data\.image_size: `fit` refuses 'big'"):
        checked(write_space(tmp_path / "s3.yaml", {"data.image_size": {"choice": [32, "big"]}}), options)


def test_the_baseline_is_the_configs_own_values_and_one_outside_the_space_is_one_line(tmp_path):
    options = ["--config", str(REPO / "configs" / "quickstart.yaml"), "--model.network.channels", "[4, 8]"]
    config = parse_fit_options(options).config
    assert read_space(write_space(tmp_path / "s.yaml", SPACE)).baseline(config) == {
        "model.optimizer.init_args.lr": 0.001,
        "model.network.init_args.channels": "[4, 8]",
    }
    narrow = write_space(tmp_path / "narrow.yaml", {**SPACE, "model.optimizer.init_args.lr": {"uniform": [0.01, 0.1]}})
    with pytest.raises(UserInputError, match=r"--tune.baseline: the config's model.optimizer.init_args.lr is 0.001, outside .*narrow"):
        read_space(narrow).baseline(config)
    other = write_space(tmp_path / "other.yaml", {**SPACE, "trainer.max_epochs": {"int": [1, 3]}})
    with pytest.raises(UserInputError, match=r"the config's trainer.max_epochs is 5, outside"):
        read_space(other).baseline(parse_fit_options([*options, "--trainer.max_epochs", "5"]).config)
    nullable = write_space(tmp_path / "null.yaml", {"trainer.max_time": {"choice": [None, "00:00:08:00"]}})
    assert read_space(nullable).baseline(config) == {"trainer.max_time": None}  # a choice of null is a value, not "outside"


@pytest.mark.parametrize("direction", ["maximize", "minimize"])
def test_of_trials_that_tie_the_best_is_the_one_that_took_least_time(direction):
    study = optuna.create_study(direction=direction)
    start = datetime(2026, 12, 6)
    worse = 0.70 if direction == "maximize" else 0.80
    for number, (value, minutes) in enumerate(((0.75, 8), (0.75, 5), (worse, 1), (0.75, 6))):
        end = start + timedelta(minutes=minutes)
        study.add_trial(optuna.trial.FrozenTrial(number, optuna.trial.TrialState.COMPLETE, value, start, end, {}, {}, {}, {}, {}, number))
    assert best_trial(study).number == 1 and best_trial(optuna.create_study()) is None


def test_durations():
    assert [parse_duration(text) for text in ("2h", "90m", "1h30m", "45s", "3600", "0.5h")] == [7200, 5400, 5400, 45, 3600, 1800]
    with pytest.raises(Exception, match="not a duration"):
        parse_duration("two hours")


# Reporting and pruning ----------------------------------------------------------------------------


def fake_trainer(**metrics) -> SimpleNamespace:
    import torch

    return SimpleNamespace(sanity_checking=False, callback_metrics={k: torch.tensor(v) for k, v in metrics.items()}, should_stop=False)


def test_a_trial_behind_the_median_is_stopped_from_its_second_validation_and_a_missing_metric_names_the_logged_ones():
    study = optuna.create_study(direction="maximize", pruner=make_pruner("median", startup_trials=1))
    leader = ReportToTrial(study.ask(), "val/acc", "maximize")
    for value in (0.5, 0.8):
        leader.on_validation_end(trainer := fake_trainer(**{"val/acc": value}), None)
    study.tell(leader.trial, leader.result(trainer))
    assert leader.result(trainer) == pytest.approx(0.8) and not trainer.should_stop
    behind = ReportToTrial(study.ask(), "val/acc", "maximize")
    behind.on_validation_end(trainer := fake_trainer(**{"val/acc": 0.1, "val/loss": 2.0}), None)
    assert not behind.pruned and not trainer.should_stop  # the first validation is never judged
    behind.on_validation_end(trainer, None)
    assert behind.pruned and trainer.should_stop
    with pytest.raises(UserInputError, match=r"--tune.metric 'val/accuracy' is not logged by this run; it logs: val/acc, val/loss\."):
        ReportToTrial(study.ask(), "val/accuracy", "maximize").on_validation_end(trainer, None)


# A study end to end ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gems(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("tune") / "gems", train_per_class=6, test_per_class=1)


def tune(*args, capsys=None) -> tuple[int, str]:
    """``main.py tune`` in this process: the exit status, and stdout + stderr when ``capsys`` is given."""
    try:
        status = cli_main(["tune", *map(str, args)])
    except SystemExit as exit:
        status = exit.code
    captured = capsys.readouterr() if capsys else None
    return status, (captured.out + captured.err if captured else "")


@pytest.mark.slow
def test_a_study_runs_resumes_and_writes_a_config_that_fit_stacks(tmp_path, gems, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    space = write_space(tmp_path / "lr.yaml", SPACE)
    options = [*fit_options(gems), "--model.network.channels", "[4, 8]"]
    baseline = ["--tune.baseline", "true"]
    status, output = tune("--tune.space", space, "--tune.trials", 3, "--tune.out", "out", *baseline, *options, capsys=capsys)
    assert status == 0, output
    study = study_of(tmp_path / "out", "lr")
    assert states(study) == ["COMPLETE"] * 3
    first = min(study.trials, key=lambda trial: trial.number)  # the config's own settings ran first
    assert first.params == {"model.optimizer.init_args.lr": 0.001, "model.network.init_args.channels": "[4, 8]"}
    assert first.user_attrs["baseline"] and f"baseline: trial 0 (the config's own settings), val/acc {first.value:.4f}" in output
    folder = tmp_path / "out" / "lr"
    for number in range(3):  # each trial's fit wrote to its own folder
        assert (folder / f"trial-{number}" / "checkpoints" / "last.ckpt").is_file()
        assert len(list((folder / f"trial-{number}").rglob("metrics.csv"))) == 1
    rows = list(csv.DictReader((folder / "trials.csv").open()))
    assert [row["state"] for row in rows] == ["complete"] * 3 and all(row["validations"] == "2" for row in rows)
    assert [row["baseline"] for row in rows] == ["yes", "", ""]
    assert {float(row["value"]) for row in rows} == {trial.value for trial in study.trials}
    assert (folder / "history.png").stat().st_size > 0 and (folder / "importance.png").stat().st_size > 0
    assert f"optuna-dashboard 'sqlite:///{folder / 'study.db'}'" in output

    best = folder / "best.yaml"  # stacked on the study's options, fit reads the best trial's settings
    config = parse_fit_options([*options, "--config", str(best)]).config
    assert config.model.optimizer.init_args.lr == study.best_params["model.optimizer.init_args.lr"]
    assert list(config.model.network.init_args.channels) == json.loads(study.best_params["model.network.init_args.channels"])

    status, output = tune("--tune.space", space, "--tune.trials", 4, "--tune.out", "out", *baseline, *options, capsys=capsys)
    assert status == 0 and "worker 0: done, the study has its 4 trials" in output, output
    study = study_of(tmp_path / "out", "lr")  # resumed: the baseline is not queued again
    assert states(study) == ["COMPLETE"] * 4 and (folder / "trial-3").is_dir()
    assert [trial.number for trial in study.trials if trial.user_attrs.get("baseline")] == [0]
    first_sampled, resumed = study.trials[1].params, study.trials[3].params  # the resumed command draws anew
    assert resumed["model.optimizer.init_args.lr"] != first_sampled["model.optimizer.init_args.lr"]

    other = write_space(tmp_path / "other.yaml", {**SPACE, "model.optimizer.init_args.lr": {"uniform": [0.001, 0.01]}})
    status, output = tune("--tune.space", other, "--tune.study", "lr", "--tune.out", "out", *options, capsys=capsys)
    assert status == 2 and "searches another space than" in output and "model.optimizer.init_args.lr there is" in output, output
    status, output = tune("--tune.space", space, "--tune.metric", "val/loss", "--tune.out", "out", *options, capsys=capsys)
    assert status == 2 and "is to maximize val/acc, not to minimize val/loss" in output, output


@pytest.mark.slow
def test_a_metric_the_run_does_not_log_is_one_line_after_the_first_validation(tmp_path, gems, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    space = write_space(tmp_path / "lr.yaml", SPACE)
    status, output = tune("--tune.space", space, "--tune.metric", "val/accuracy", "--tune.out", "out", *fit_options(gems), capsys=capsys)
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert status == 2 and len(errors) == 1 and "Traceback" not in output, output
    assert errors[0].startswith("error: --tune.metric 'val/accuracy' is not logged by this run; it logs:") and "val/acc" in errors[0]
    assert states(study_of(tmp_path / "out", "lr")) == ["FAIL"]


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        (["--tune.storage", f"postgresql://nobody@127.0.0.1:{free_port()}/optuna"], "--tune.storage postgresql://nobody@127.0.0.1:"),
        (["--tune.storage", "not a url"], "is not a database URL"),
        (["--tune.trials", "0"], "--tune.trials must be at least 1"),
        (["--tune.timeout", "soon"], "'soon' is not a duration"),
        (["--tune.baseline", "maybe"], "'maybe' is not true or false"),
    ],
)
def test_bad_tune_options_are_one_line(tmp_path, gems, capsys, extra, says):
    space = write_space(tmp_path / "lr.yaml", SPACE)
    status, output = tune("--tune.space", space, "--tune.out", tmp_path / "out", *extra, *fit_options(gems), capsys=capsys)
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert status == 2 and len(errors) == 1 and says in errors[0] and "Traceback" not in output, output


def test_an_empty_space_is_one_line_before_anything_runs(tmp_path, gems, capsys):
    status, output = tune(
        "--tune.space", write_space(tmp_path / "empty.yaml", ""), "--tune.out", tmp_path / "out", *fit_options(gems), capsys=capsys
    )
    assert status == 2 and "empty.yaml' is empty" in output and not (tmp_path / "out").exists(), output


# Workers and signals, in processes of their own ---------------------------------------------------------


def worker_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return dict(
        os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", GEM_LIGHTNING_CACHE=str(tmp_path / "cache"), **extra
    )


@pytest.mark.slow
def test_two_workers_share_one_study_without_losing_or_repeating_a_trial(tmp_path, gems):
    space = write_space(tmp_path / "lr.yaml", SPACE)
    result = subprocess.run(
        [sys.executable, str(REPO / "main.py"), "tune", "--tune.space", str(space), "--tune.trials", "4", "--tune.workers", "2",
         "--tune.out", str(tmp_path / "out"), *fit_options(gems)],
        env=worker_env(tmp_path), cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "worker 0: done" in output and "worker 1: done" in output, output[-4000:]
    study = study_of(tmp_path / "out", "lr")
    finished = [trial for trial in study.trials if trial.state == optuna.trial.TrialState.COMPLETE]
    assert 4 <= len(finished) <= 5 and len(study.trials) == len(finished), states(study)  # at most one extra, none lost
    by_worker = {
        worker: sorted(t.number for t in finished if t.user_attrs["worker"] == worker)
        for worker in {t.user_attrs["worker"] for t in finished}
    }
    print(json.dumps({"scenario": "2 local workers", "states": states(study), "trials by worker": by_worker}))  # pytest -s
    assert len(by_worker) == 2  # both workers ran trials
    assert sorted(path.name for path in (tmp_path / "out" / "lr").glob("trial-*")) == sorted(f"trial-{t.number}" for t in finished)
    assert "study 'lr':" in output and output.count("trials table:") == 1  # the summary, once, by the parent


@pytest.mark.slow
def test_sigterm_stops_the_worker_cleanly_and_the_same_command_resumes_the_study(tmp_path, gems):
    """The running trial stops at the next step with its checkpoint, is marked failed and its settings
    are queued again; the worker exits 0; the same command then runs the queued settings first."""
    space = write_space(tmp_path / "lr.yaml", SPACE)
    markers = tmp_path / "markers"
    markers.mkdir()
    command = ["tune", "--tune.space", str(space), "--tune.trials", "2", "--tune.out", str(tmp_path / "out"), *fit_options(gems)]
    pauses = json.dumps({"0": {"at": "train", "epoch": 1, "batch": 0}})
    env = worker_env(tmp_path, GEM_TEST_PAUSES=pauses, GEM_TEST_MARKERS=str(markers))
    worker = subprocess.Popen(
        [sys.executable, str(REPO / "tests" / "pausing_main.py"), *command],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 300
    while not (markers / "0-train-0.json").exists():
        assert worker.poll() is None and time.monotonic() < deadline, worker.stdout.read() if worker.poll() is not None else "no pause"
        time.sleep(0.2)
    worker.send_signal(signal.SIGTERM)
    output = worker.communicate(timeout=300)[0]
    assert worker.returncode == 0 and "Traceback" not in output, output[-4000:]
    assert (
        "trial 0: failed (stopped by SIGTERM; its settings are queued again)" in output and "worker 0: done, stopped by SIGTERM" in output
    )
    study = study_of(tmp_path / "out", "lr")
    assert states(study) == ["FAIL", "WAITING"]
    stopped, queued = sorted(study.trials, key=lambda trial: trial.number)
    assert queued.params == stopped.params and queued.system_attrs["failed_trial"] == 0
    import torch

    saved = torch.load(tmp_path / "out" / "lr" / "trial-0" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert saved["epoch"] == 1 and saved["global_step"] > 2  # the SIGTERM checkpoint, mid-epoch 1

    result = subprocess.run(
        [sys.executable, str(REPO / "main.py"), *command],
        env=worker_env(tmp_path),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    study = study_of(tmp_path / "out", "lr")
    assert states(study) == ["FAIL", "COMPLETE", "COMPLETE"]
    assert study.trials[1].params == stopped.params  # the queued settings ran first

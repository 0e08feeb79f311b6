"""The command line, end to end: fit -> validate -> test -> predict through ``python main.py``."""

from __future__ import annotations

import csv
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import yaml
from conftest import REPO
from helpers import TINY_MODEL, read_metrics, run_cli


def common(tmp_path: Path, name: str) -> list[str]:
    return [
        "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false",
        "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"), "--trainer.logger.init_args.name", name,
        "--data.image_size", "32", "--data.batch_size", "8", "--data.loader.num_workers", "0",
    ]  # fmt: skip


@pytest.mark.slow
def test_fit_validate_test_predict(tiny_dataset, tmp_path, cpu_env, isolated_cache):
    env = dict(cpu_env, GEM_LIGHTNING_CACHE=str(isolated_cache))
    data = ["--data.data_dir", str(tiny_dataset)]
    run_cli("fit", *common(tmp_path, "fit"), *data, *TINY_MODEL, "--trainer.max_epochs", "3", env=env, cwd=tmp_path)

    run_dir = tmp_path / "runs" / "fit" / "version_0"
    checkpoints = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert "last.ckpt" in checkpoints and any(name.startswith("best-") for name in checkpoints)
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["data"]["data_dir"] == str(tiny_dataset) and config["model"]["network"]["init_args"]["channels"] == [8, 16]
    hparams = yaml.safe_load((run_dir / "hparams.yaml").read_text())
    assert hparams["class_names"] == ["Blue Stone", "Green Stone", "Red Stone"] and hparams["image_size"] == 32
    fit_metrics = read_metrics(run_dir)
    assert fit_metrics["epoch"] == 2 and 0.0 <= fit_metrics["val/acc"] <= 1.0

    ckpt = str(run_dir / "checkpoints" / "last.ckpt")
    run_cli("validate", *common(tmp_path, "validate"), *data, "--ckpt_path", ckpt, env=env, cwd=tmp_path)
    validated = read_metrics(tmp_path / "runs" / "validate" / "version_0")
    assert validated["val/samples"] == 6  # 20% of 10 per class
    assert validated["val/acc"] == pytest.approx(fit_metrics["val/acc"], abs=1e-6)

    run_cli("test", *common(tmp_path, "test"), *data, "--ckpt_path", ckpt, env=env, cwd=tmp_path)
    assert read_metrics(tmp_path / "runs" / "test" / "version_0")["test/samples"] == 9

    # predict needs nothing but the checkpoint: no data_dir, no model options.
    out = tmp_path / "predictions.csv"
    (tiny_dataset / "test" / "Red Stone" / "broken.jpg").write_bytes(b"not really a jpeg")
    result = run_cli(
        "predict", "--ckpt_path", ckpt, "--data.predict_path", str(tiny_dataset / "test"), "--predictions.output", str(out),
        "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"), "--trainer.enable_progress_bar", "false",
        env=env, cwd=tmp_path,
    )  # fmt: skip
    assert str(out) in result.stdout + result.stderr
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 9
    assert rows[0]["path"].endswith(".jpg") and rows == sorted(rows, key=lambda r: Path(r["path"]).relative_to(tiny_dataset).as_posix())
    for row in rows:
        assert row["prediction"] in {"Blue Stone", "Green Stone", "Red Stone"} and row["class_1"] == row["prediction"]
        assert float(row["prob_1"]) >= float(row["prob_2"]) >= float(row["prob_3"])
    rejected = list(csv.DictReader((tmp_path / "predictions.rejected.csv").open()))
    assert [Path(r["path"]).name for r in rejected] == ["broken.jpg"] and rejected[0]["reason"] == "not an image"


def test_bad_data_dir_is_one_clear_line_not_a_traceback(tmp_path, cpu_env):
    result = run_cli("fit", "--data.data_dir", str(tmp_path / "missing"), env=cpu_env, cwd=tmp_path, check=False)
    assert result.returncode == 2
    assert "error: data_dir" in result.stderr and "missing" in result.stderr and "Traceback" not in result.stderr


def test_checkpoint_class_mismatch_is_refused(tiny_dataset, tmp_path, cpu_env, isolated_cache):
    from conftest import make_dataset

    env = dict(cpu_env, GEM_LIGHTNING_CACHE=str(isolated_cache))
    run_cli(
        "fit",
        *common(tmp_path, "fit"),
        "--data.data_dir",
        str(tiny_dataset),
        *TINY_MODEL,
        "--trainer.max_steps",
        "1",
        env=env,
        cwd=tmp_path,
    )
    other = make_dataset(tmp_path / "other", 3, 1, classes={"Cat": (1, 2, 3), "Dog": (200, 100, 0)})
    ckpt = tmp_path / "runs" / "fit" / "version_0" / "checkpoints" / "last.ckpt"
    result = run_cli(
        "validate", *common(tmp_path, "v"), "--data.data_dir", str(other), "--ckpt_path", str(ckpt), env=env, cwd=tmp_path, check=False
    )
    assert result.returncode == 2 and "trained on 3 classes" in result.stderr


@pytest.mark.parametrize("config", sorted(p.name for p in (REPO / "configs").glob("*.yaml")))
def test_every_config_parses(config, tmp_path, cpu_env):
    from conftest import make_dataset

    data_dir = make_dataset(tmp_path / "gems", 2, 1)
    result = run_cli(
        "fit", "--config", str(REPO / "configs" / config), "--data.data_dir", str(data_dir), "--print_config", env=cpu_env, cwd=tmp_path
    )
    printed = yaml.safe_load(result.stdout)
    assert printed["data"]["data_dir"] == str(data_dir) and "trainer" in printed and "model" in printed


def test_console_script_is_main_py(tmp_path, cpu_env):
    import tomllib

    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["gem-lightning"] == "gem_lightning.cli.app:main"
    assert "from gem_lightning.cli.app import main" in (REPO / "main.py").read_text()
    result = subprocess.run(  # main.py itself, in a fresh interpreter
        [sys.executable, str(REPO / "main.py"), "prepare", "--source", str(tmp_path / "missing"), "--output", str(tmp_path / "out")],
        env=cpu_env, cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 2 and "missing" in result.stderr  # tools' exit status reaches the shell


def test_cli_builds_without_running_for_scripts(tiny_dataset, tmp_path, monkeypatch, recwarn):
    from gem_lightning.cli.app import cli_main
    from gem_lightning.cli.precision import auto_precision

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["main.py", "seeds", "--seeds", "0"])  # as when `seeds` calls it
    cli = cli_main(["--config", str(REPO / "configs" / "gemstones.yaml"), "--data.data_dir", str(tiny_dataset)], run=False)
    assert cli.model.hparams.class_names == cli.datamodule.class_names == ["Blue Stone", "Green Stone", "Red Stone"]
    assert cli.datamodule.image_size == cli.model.hparams.image_size == 96
    assert cli.trainer.precision == auto_precision(cli.trainer.accelerator)[0]  # the config's `auto`, resolved for this machine
    assert not [w for w in recwarn if "args parameter" in str(w.message)]


def test_bad_model_setting_is_one_error_line(tiny_dataset, tmp_path, monkeypatch, capsys):
    from gem_lightning.cli.app import cli_main

    monkeypatch.chdir(tmp_path)
    args = [
        "--config",
        str(REPO / "configs" / "gemstones.yaml"),
        "--data.data_dir",
        str(tiny_dataset),
        "--model.network.convs_per_block",
        "[1, 2]",
    ]
    with pytest.raises(SystemExit) as exit_info:
        cli_main(args, run=False)
    assert exit_info.value.code == 2
    assert "error: model.network: `convs_per_block` has 2 entries but `channels` has 5 blocks" in capsys.readouterr().err


def test_commands_have_one_home_and_library_code_does_not_import_the_command_line():
    import ast
    import importlib

    from gem_lightning.cli.commands import COMMANDS

    for name, module in COMMANDS.items():
        assert module == f"gem_lightning.cli.commands.{name}" and callable(importlib.import_module(module).main)
    package = REPO / "gem_lightning"
    for path in package.rglob("*.py"):
        if (package / "cli") in path.parents:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                assert not node.module.startswith("gem_lightning.cli"), f"{path} imports {node.module}"


@pytest.mark.parametrize("native", [True, False])
def test_bf16_on_a_cpu_that_emulates_it_warns_with_the_faster_setting(native, monkeypatch):
    from lightning.pytorch import Trainer

    from gem_lightning.cli import errors as cli_errors

    monkeypatch.setattr(cli_errors, "cpu_has_bf16", lambda: native)
    trainer = Trainer(accelerator="cpu", precision="bf16-mixed", logger=False, enable_checkpointing=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert cli_errors.check_trainer_runs_here(trainer, "bf16-mixed") is trainer
    emulated = [w for w in caught if "bf16 is emulated" in str(w.message)]
    assert len(emulated) == (0 if native else 1)
    assert native or "--trainer.precision 32-true" in str(emulated[0].message)

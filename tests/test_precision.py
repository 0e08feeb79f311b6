"""``trainer.precision: auto``: the fastest precision native to the machine and device, said once."""

from __future__ import annotations

import re

import pytest
import torch
import yaml
from conftest import REPO
from helpers import TINY_MODEL, run_cli
from lightning.pytorch.accelerators import CUDAAccelerator, MPSAccelerator, XLAAccelerator
from test_cli import common

from gem_lightning.cli import precision
from gem_lightning.cli.precision import AutoPrecisionTrainer, auto_precision, device_kind

PRECISION_CONFIGS = {"bf16.yaml", "fp32.yaml", "fp16_gpu.yaml"}
"""Configs that are about one precision: they keep it explicit."""


@pytest.mark.parametrize(("native", "expected"), [(True, "bf16-mixed"), (False, "32-true"), (None, "32-true")])
def test_auto_on_a_cpu_is_bf16_where_the_cpu_computes_it_natively_else_float32(native, expected, monkeypatch):
    monkeypatch.setattr(precision, "cpu_bf16_native", lambda: native)
    chosen, reason = auto_precision("cpu")
    assert chosen == expected
    assert ("natively" in reason) if native else ("emulated" in reason or "cannot tell" in reason)


@pytest.mark.parametrize(("native", "expected"), [(True, "bf16-mixed"), (False, "16-mixed")])
def test_auto_on_a_cuda_gpu_is_bf16_where_native_else_float16(native, expected, monkeypatch):
    monkeypatch.setattr(precision, "device_kind", lambda accelerator: "cuda")
    monkeypatch.setattr(precision, "cuda_bf16_native", lambda: native)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *args: "Some GPU")
    assert auto_precision("gpu") == (expected, f"Some GPU {'computes bf16 natively' if native else 'has no native bf16 (before Ampere)'}")


def test_the_device_is_the_one_lightnings_auto_accelerator_picks(monkeypatch):
    for cls in (XLAAccelerator, MPSAccelerator, CUDAAccelerator):
        monkeypatch.setattr(cls, "is_available", staticmethod(lambda: False))
    assert device_kind("auto") == device_kind("cpu") == "cpu"
    monkeypatch.setattr(CUDAAccelerator, "is_available", staticmethod(lambda: True))
    assert device_kind("auto") == device_kind("gpu") == device_kind("cuda") == "cuda"
    monkeypatch.setattr(MPSAccelerator, "is_available", staticmethod(lambda: True))
    assert device_kind("auto") == "mps" and auto_precision("mps")[0] == "32-true"


@pytest.mark.parametrize("native", [True, False])
def test_the_trainer_resolves_auto_and_says_its_choice_once(native, monkeypatch):
    said = []
    monkeypatch.setattr(precision, "cpu_bf16_native", lambda: native)
    monkeypatch.setattr(precision, "rank_zero_info", said.append)
    options = dict(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer = AutoPrecisionTrainer(precision="auto", **options)
    expected = "bf16-mixed" if native else "32-true"
    assert trainer.precision == expected
    assert len(said) == 1 and said[0].startswith(f"trainer.precision auto -> {expected}: ")
    assert AutoPrecisionTrainer(precision="16-true", **options).precision == "16-true" and len(said) == 1  # explicit: as given, silently


def test_the_shipped_configs_use_auto_unless_they_are_about_a_precision():
    for path in sorted((REPO / "configs").glob("*.yaml")):
        trainer = (yaml.safe_load(path.read_text()) or {}).get("trainer") or {}
        if path.name in PRECISION_CONFIGS:
            assert trainer["precision"] != "auto", path.name
        elif "precision" in trainer:
            assert trainer["precision"] == "auto", path.name


@pytest.mark.slow
def test_a_cli_fit_with_precision_auto_runs_and_says_its_choice_once(tiny_dataset, tmp_path, cpu_env):
    data = ["--data.data_dir", str(tiny_dataset), *TINY_MODEL, "--trainer.max_epochs", "1"]
    result = run_cli("fit", *common(tmp_path, "auto"), *data, "--trainer.precision", "auto", env=cpu_env, cwd=tmp_path)
    said = re.findall(r"trainer\.precision auto -> (\S+):", result.stdout + result.stderr)
    assert said == [auto_precision("cpu")[0]]
    config = yaml.safe_load((tmp_path / "runs" / "auto" / "version_0" / "config.yaml").read_text())
    assert config["trainer"]["precision"] == "auto"  # the run's config stays portable to other machines
    assert (tmp_path / "runs" / "auto" / "version_0" / "checkpoints" / "last.ckpt").is_file()


def test_a_precision_neither_lightning_nor_auto_knows_is_refused_naming_the_setting(tiny_dataset, tmp_path, cpu_env):
    result = run_cli("fit", *common(tmp_path, "bad"), "--data.data_dir", str(tiny_dataset), "--trainer.precision", "fastest",
                     env=cpu_env, cwd=tmp_path, check=False)  # fmt: skip
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2 and len(errors) == 1 and "trainer.precision" in errors[0] and "Traceback" not in result.stderr

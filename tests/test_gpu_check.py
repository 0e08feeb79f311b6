"""``benchmarks/gpu_check.py``: its CPU dry run goes through every step and writes the results files;
CUDA-only parts are reported as skipped with the reason."""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest
import torch
from conftest import REPO, make_dataset
from test_distributed import clean_launch_env
from warm_cli import run_main

SCRIPT = REPO / "benchmarks" / "gpu_check.py"


def load_gpu_check():
    """The script as a module (benchmarks/ is no package)."""
    if "gpu_check" not in sys.modules:
        spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
        sys.modules["gpu_check"] = importlib.util.module_from_spec(spec)  # dataclasses look their module up there
        spec.loader.exec_module(sys.modules["gpu_check"])
    return sys.modules["gpu_check"]


@pytest.mark.slow
def test_dry_run_goes_through_every_step(tmp_path, cpu_env, isolated_cache):
    data = make_dataset(tmp_path / "gems", train_per_class=12, test_per_class=3)
    out = tmp_path / "results" / "check"
    env = dict(clean_launch_env(cpu_env), GEM_LIGHTNING_CACHE=str(isolated_cache), OMP_NUM_THREADS="1")
    done = run_main(["--dry-run", "--data-dir", data, "--out", out], env=env, cwd=tmp_path, timeout=1800, script=SCRIPT)  # hang guard
    log = (tmp_path / "results" / "check.log").read_text() if (tmp_path / "results" / "check.log").is_file() else ""
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:] + log[-4000:]

    results = json.loads((tmp_path / "results" / "check.json").read_text())
    steps = results["steps"]
    assert results["meta"]["dry_run"] is True
    assert list(steps) == list(load_gpu_check().STEPS)
    assert steps["cuda_tests"]["status"] == "skipped" and "CUDA" in steps["cuda_tests"]["reason"]
    for name in ("environment", "cli", "throughput", "data_wait", "predict", "ddp", "compile"):
        assert steps[name]["status"] == "ok", (name, steps[name]["reason"])

    (cli,) = steps["cli"]["tables"]
    commands = [(row[0], row[1], row[2], row[3]) for row in cli["rows"]]
    assert commands == [("bf16-mixed", "loader", c, "ok") for c in ("fit", "validate", "test", "predict")] + [
        ("bf16-mixed", "device", "fit", "ok")
    ]
    fit = cli["rows"][0][5]
    assert fit["device"] == "cpu" and fit["channels_last"] is True and fit["steps"] == 3
    assert cli["rows"][3][5]["rows"] == 8  # predict: 2 batches of 4 (the dry run's limit)
    assert any("16-mixed" in part for part in steps["cli"]["skipped"])

    (throughput,) = steps["throughput"]["tables"]
    assert [row[0] for row in throughput["rows"]] == ["a", "b", "c_seed", "c"]
    assert all(row[2] > 0 for row in throughput["rows"]) and throughput["rows"][0][4] == 1.0  # a / a
    (waits,) = steps["data_wait"]["tables"]
    assert [(row[0], row[1], row[2]) for row in waits["rows"]] == [(r, a, 1) for r in ("c_seed", "c") for a in ("loader", "device")]
    assert all(row[3] > 0 and row[4] > 0 for row in waits["rows"])
    (predict,) = steps["predict"]["tables"]
    assert [row[0] for row in predict["rows"]] == ["cli", "trainer", "plain"]

    ddp = steps["ddp"]["figures"]
    assert (ddp["backend"], ddp["world_size"], ddp["ddp_wrapped"], ddp["steps"]) == ("gloo", 1, True, 2)
    assert ddp["batchnorm_layers"] == 5 and ddp["all_reduce_sum"] == 1.0
    assert any("NCCL" in part for part in steps["ddp"]["skipped"]) and any("SyncBatchNorm" in part for part in steps["ddp"]["skipped"])
    (compiled,) = steps["compile"]["tables"]
    assert [(row[0], row[1]) for row in compiled["rows"]] == [("a", False), ("a", True), ("b", False), ("b", True)]

    markdown = (tmp_path / "results" / "check.md").read_text()
    assert "Dry run on the CPU" in markdown and "| a | 64, 4 |" in markdown
    for name in steps:
        assert f"## {name}: " in markdown


def test_a_spent_budget_starts_no_step_and_says_so(tmp_path, capsys):
    data = make_dataset(tmp_path / "gems", train_per_class=2, test_per_class=1)
    out = tmp_path / "check"
    assert load_gpu_check().main(["--dry-run", "--data-dir", str(data), "--out", str(out), "--budget", "0", "--only", "ddp"]) == 1
    steps = json.loads((tmp_path / "check.json").read_text())["steps"]
    assert list(steps) == ["environment", "ddp"]  # environment always runs first: it measures the ceilings
    for result in steps.values():
        assert result["status"] == "out of budget" and result["reason"].startswith("not started")
    assert "| ddp | out of budget |" in (tmp_path / "check.md").read_text()


def test_unknown_step_and_missing_photos_are_refused(tmp_path, capsys):
    gpu_check = load_gpu_check()
    with pytest.raises(SystemExit) as error:
        gpu_check.main(["--dry-run", "--only", "cli,bogus"])
    assert error.value.code == 2 and "unknown step(s) bogus" in capsys.readouterr().err
    assert gpu_check.main(["--dry-run", "--data-dir", str(tmp_path / "missing"), "--out", str(tmp_path / "x")]) == 2
    assert "missing/train does not exist" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown where there is no GPU")
def test_without_a_gpu_the_full_run_points_to_the_dry_run(tmp_path, capsys):
    assert load_gpu_check().main(["--data-dir", str(tmp_path), "--out", str(tmp_path / "x")]) == 2
    assert "--dry-run" in capsys.readouterr().err

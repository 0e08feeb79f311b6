"""The `seeds` command: fit and test per seed, then mean +- std."""

from __future__ import annotations

import csv

import pytest
from conftest import make_dataset

from gem_lightning.cli.commands.seeds import main, summarize


def test_summary_reports_mean_and_std_in_percent():
    rows = [
        {"test/acc": 0.5, "test/acc_top5": 0.9, "test/f1": 0.4, "fit_s": 10.0},
        {"test/acc": 0.7, "test/acc_top5": 1.0, "test/f1": 0.6, "fit_s": 12.0},
    ]
    text = summarize(rows)
    assert "test/acc          60.00 +- 14.14%" in text and "fit_s             11.00 +- 1.41 s" in text


@pytest.mark.slow
def test_seeds_fits_and_tests_each_seed_with_ema(tmp_path, isolated_cache, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = make_dataset(tmp_path / "gems", 6, 2)
    out = tmp_path / "seeds.csv"
    rows = main([
        "--seeds", "0", "1", "--out", str(out), "--data.data_dir", str(data), "--data.image_size", "32",
        "--data.batch_size", "8", "--data.loader.num_workers", "0",
        "--model.network.channels", "[8, 16]", "--model.network.pools", "[max, max]",
        "--model.network.hidden_units", "16", "--trainer.max_epochs", "2", "--trainer.accelerator", "cpu",
        "--trainer.enable_progress_bar", "false", "--trainer.callbacks+=lightning.pytorch.callbacks.EMAWeightAveraging",
    ])  # fmt: skip
    assert [row["seed"] for row in rows] == [0, 1]
    written = list(csv.DictReader(out.open()))
    assert [float(r["test/acc"]) for r in written] == [row["test/acc"] for row in rows]
    for row in rows:
        assert 0.0 <= row["test/acc"] <= row["test/acc_top5"] <= 1.0 and row["checkpoint"].endswith(".ckpt")


def test_seeds_resumes_from_the_rows_already_written(tmp_path, monkeypatch, capsys):
    out = tmp_path / "seeds.csv"
    out.write_text("seed,fit_s,checkpoint,test/acc,test/acc_top5,test/f1\n0,60.0,a.ckpt,0.5,0.9,0.4\n")
    trained = []

    def fake_run_seed(fit_args, seed):
        trained.append(seed)
        return {"seed": seed, "fit_s": 80.0, "checkpoint": "b.ckpt", "test/acc": 0.7, "test/acc_top5": 1.0, "test/f1": 0.6}

    monkeypatch.setattr("gem_lightning.cli.commands.seeds.run_seed", fake_run_seed)
    rows = main(["--seeds", "0", "1", "--out", str(out)])
    assert trained == [1]
    assert [(row["seed"], row["test/acc"]) for row in rows] == [(0, 0.5), (1, 0.7)]
    assert [r["seed"] for r in csv.DictReader(out.open())] == ["0", "1"]
    assert "test/acc          60.00 +- 14.14%" in capsys.readouterr().out


def test_default_csv_goes_to_the_first_seeds_run_folder(tmp_path, monkeypatch):
    earlier = tmp_path / "runs" / "gems" / "seeds.csv"
    earlier.parent.mkdir(parents=True)
    earlier.write_text("results of an earlier run\n")

    def fake_run_seed(fit_args, seed):
        checkpoints = tmp_path / "runs" / "gems" / f"version_{seed}" / "checkpoints"
        checkpoints.mkdir(parents=True)
        return {
            "seed": seed,
            "fit_s": 1.0,
            "checkpoint": str(checkpoints / "best.ckpt"),
            "test/acc": 0.5,
            "test/acc_top5": 0.9,
            "test/f1": 0.4,
        }

    monkeypatch.setattr("gem_lightning.cli.commands.seeds.run_seed", fake_run_seed)
    main(["--seeds", "3", "4"])
    assert [r["seed"] for r in csv.DictReader((tmp_path / "runs" / "gems" / "version_3" / "seeds.csv").open())] == ["3", "4"]
    assert earlier.read_text() == "results of an earlier run\n"

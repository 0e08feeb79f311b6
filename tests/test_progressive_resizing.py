"""Progressive resizing: training batches grow from a fraction of ``data.image_size`` to all of it."""

from __future__ import annotations

import pytest
from conftest import make_dataset
from helpers import TINY_MODEL, run_cli
from lightning.pytorch import Callback
from test_cli import common

from gem_lightning.data.progressive_resizing import ProgressiveResizing
from gem_lightning.errors import UserInputError


def test_schedule_holds_grows_and_ends_at_full_size():
    schedule = ProgressiveResizing(initial_scale=0.5, delay_fraction=0.25, finetune_fraction=0.25, size_increment=16)
    sizes = [schedule.size_at(step / 100, 160) for step in range(101)]
    assert set(sizes[:26]) == {80}  # held at half size through the delay
    assert set(sizes[75:]) == {160}  # full size for the last quarter
    assert sizes == sorted(sizes) and all(size % 16 == 0 for size in sizes)
    assert len(set(sizes)) == 6  # 80, 96, ..., 160: grows in increments


def test_full_scale_never_resizes():
    assert {ProgressiveResizing(initial_scale=1.0).size_at(p / 10, 150) for p in range(11)} == {150}


@pytest.mark.parametrize(("setting", "message"), [
    ({"initial_scale": 0.0}, "initial_scale must be in (0, 1]"),
    ({"delay_fraction": 0.7, "finetune_fraction": 0.5}, "add up to at most 1"),
    ({"size_increment": 0}, "size_increment must be at least 1"),
])  # fmt: skip
def test_impossible_settings_are_named(setting, message):
    with pytest.raises(UserInputError, match=rf"data\.progressive_resizing: .*{message}".replace("(", r"\(").replace(")", r"\)")):
        ProgressiveResizing(**setting).check()


SCHEDULE = [
    "--data.progressive_resizing.initial_scale",
    "0.5",
    "--data.progressive_resizing.delay_fraction",
    "0.25",
    "--data.progressive_resizing.finetune_fraction",
    "0.25",
    "--data.progressive_resizing.size_increment",
    "8",
]


class SeenSizes(Callback):
    def __init__(self) -> None:
        self.train: list[tuple[int, int]] = []
        self.val: set[int] = set()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.train.append((trainer.global_step, batch[0].shape[-1]))

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self.val.add(batch[0].shape[-1])


@pytest.mark.slow
def test_fit_trains_small_then_full_size_and_validates_at_full_size(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = make_dataset(tmp_path / "gems", train_per_class=12, test_per_class=0)
    from gem_lightning.cli.app import cli_main

    seen = SeenSizes()
    cli = cli_main(
        [
            "fit",
            *common(tmp_path, "progressive"),
            "--data.data_dir",
            str(data),
            *TINY_MODEL,
            "--model.network.head",
            "gap",
            "--data.image_size",
            "64",
            "--trainer.max_epochs",
            "4",
            "--data.val_fraction",
            "0.25",
            *SCHEDULE,
        ],
        callbacks=[seen],
    )
    total = cli.trainer.estimated_stepping_batches
    schedule = cli.datamodule.progressive_resizing
    assert len(seen.train) == total == 4 * 4  # 27 training photos in batches of 8, 4 epochs
    assert seen.train == [(step, schedule.size_at(step / total, 64)) for step in range(total)]
    assert seen.train[0][1] == 32 and seen.train[-1][1] == 64 and len({size for _, size in seen.train}) >= 3
    assert seen.val == {64}
    assert cli.model.hparams.image_size == 64  # the checkpoint predicts at the full size


@pytest.mark.slow
def test_a_network_of_one_input_size_is_refused_in_one_line(tiny_dataset, tmp_path, cpu_env):
    result = run_cli(
        "fit", *common(tmp_path, "flatten"), "--data.data_dir", tiny_dataset, *TINY_MODEL, *SCHEDULE, env=cpu_env, cwd=tmp_path, check=False
    )
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2 and len(errors) == 1 and "Traceback" not in result.stderr
    assert "data.progressive_resizing" in errors[0] and "head: gap" in errors[0]


def test_a_run_of_unknown_length_is_refused():
    from gem_lightning.models import TimmSpec
    from gem_lightning.training.checks import check_progressive_resizing

    check_progressive_resizing(TimmSpec(name="tf_efficientnet_lite0"), 100)
    for unknown in (float("inf"), -1):  # no length given; a stream of unknown length
        with pytest.raises(UserInputError, match="set trainer.max_steps"):
            check_progressive_resizing(TimmSpec(name="tf_efficientnet_lite0"), unknown)


def test_no_growth_phase_holds_then_jumps_to_full_size():
    schedule = ProgressiveResizing(initial_scale=0.5, delay_fraction=0.6, finetune_fraction=0.4)
    assert [schedule.size_at(p, 64) for p in (0.0, 0.59, 0.6, 1.0)] == [32, 32, 64, 64]

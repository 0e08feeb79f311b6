"""The standard augmentation policies and random erasing: torchvision's, photometric only, after the
loader's one warp, on folders and streams, refused on the device, shown by ``preview``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml
from conftest import REPO, datamodule_kwargs, make_dataset
from helpers import TINY_MODEL, TINY_NETWORK, run_cli
from lightning.pytorch import Trainer, seed_everything
from test_cli import common
from torchvision.transforms import v2

from gem_lightning.compat.torchvision import (
    GEOMETRIC_OPS,
    PhotometricAugMix,
    PhotometricAutoAugment,
    PhotometricRandAugment,
    PhotometricTrivialAugmentWide,
)
from gem_lightning.data.augmentation import Augmentation
from gem_lightning.data.datamodule import GemDataModule
from gem_lightning.data.tools.optimize import optimize_dataset
from gem_lightning.data.transforms import TrainAugment, torchvision_transform
from gem_lightning.errors import UserInputError
from gem_lightning.reports import preview
from gem_lightning.training.module import GemClassifier

POLICIES = ["randaugment", "trivialaugment", "autoaugment", "augmix"]
STILL = dict(rotation=0.0, zoom=0.0, shift=0.0, shear=0.0, hflip=False)
"""Augmentation whose warp keeps every pixel where it is: whatever changes, the policy changed."""
SIZE = 48


def photo(seed: int) -> torch.Tensor:
    """A ``(3, SIZE, SIZE)`` uint8 picture: colour gradients and a bright disc, different per seed."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    channels = [np.clip(0.2 + 0.6 * (a * x + (1 - a) * y), 0, 1) for a in rng.uniform(0, 1, 3)]
    cy, cx = rng.uniform(0.3, 0.7, 2)
    disc = ((y - cy) ** 2 + (x - cx) ** 2) < 0.04
    pixels = np.stack([np.where(disc, 0.95, c) for c in channels]) * 255
    return torch.from_numpy(pixels.round().astype(np.uint8))


def augmented(augment: Augmentation, images: list[torch.Tensor], seed: int) -> list[torch.Tensor]:
    torch.manual_seed(seed)
    return TrainAugment(augment, SIZE).many(images)


@pytest.mark.parametrize("policy", POLICIES)
def test_each_policy_changes_images_keeps_dtype_and_shape_and_repeats_under_a_seed(policy):
    images = [photo(seed) for seed in range(16)]
    assert all(torch.equal(out, image) for out, image in zip(augmented(Augmentation(**STILL), images, 0), images))
    first = augmented(Augmentation(**STILL, policy=policy), images, 0)
    assert all(out.dtype == torch.uint8 and out.shape == (3, SIZE, SIZE) for out in first)
    assert sum(not torch.equal(out, image) for out, image in zip(first, images)) >= 4
    assert all(torch.equal(a, b) for a, b in zip(first, augmented(Augmentation(**STILL, policy=policy), images, 0)))
    assert not all(torch.equal(a, b) for a, b in zip(first, augmented(Augmentation(**STILL, policy=policy), images, 1)))


def test_the_policies_leave_the_geometry_to_the_one_warp():
    for ours, theirs in (
        (PhotometricRandAugment, v2.RandAugment),
        (PhotometricTrivialAugmentWide, v2.TrivialAugmentWide),
        (PhotometricAugMix, v2.AugMix),
    ):
        assert set(theirs._AUGMENTATION_SPACE) - set(ours._AUGMENTATION_SPACE) == GEOMETRIC_OPS, ours.__name__
    steps = [step[0] for sub_policy in PhotometricAutoAugment()._policies for step in sub_policy]
    theirs = [step[0] for sub_policy in v2.AutoAugment()._policies for step in sub_policy]
    assert len(PhotometricAutoAugment()._policies) == len(v2.AutoAugment()._policies)  # the same sub-policies, drawn alike
    assert set(steps) == set(theirs) - GEOMETRIC_OPS and set(theirs) & GEOMETRIC_OPS


def test_the_torchvision_reference_pipeline_ends_with_the_same_policy_and_erasing():
    steps = torchvision_transform(SIZE, Augmentation(policy="randaugment", erasing=0.2)).transforms
    assert [type(step).__name__ for step in steps[-2:]] == ["PhotometricRandAugment", "RandomErasing"]


def test_random_erasing_blanks_one_rectangle_with_the_fill_colour():
    fill = (255, 0, 255)
    images = [photo(seed) for seed in range(8)]
    for before, after in zip(images, augmented(Augmentation(**STILL, fill=fill, erasing=1.0), images, 0)):
        rows, cols = (before != after).any(0).nonzero().unbind(1)
        assert len(rows) > 0
        box = after[:, rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
        assert (box == torch.tensor(fill, dtype=torch.uint8).view(3, 1, 1)).all()
    assert all(torch.equal(a, b) for a, b in zip(images, augmented(Augmentation(**STILL, erasing=0.0), images, 0)))


def test_settings_that_cannot_work_are_refused_in_one_line(isolated_cache):
    for settings, named in (
        (dict(randaugment_magnitude=31), "data.augment.randaugment_magnitude must be 0 to 30"),
        (dict(augmix_severity=0), "data.augment.augmix_severity must be 1 to 10"),
        (dict(erasing=1.5), "data.augment.erasing is a probability"),
        (dict(policy="cutout"), "data.augment.policy must be one of none, randaugment"),
    ):
        with pytest.raises(UserInputError, match=named):
            GemDataModule(None, augment=Augmentation(**settings))
    with pytest.raises(UserInputError, match="data.augment.policy runs in the loader workers only"):
        GemDataModule(None, augment=Augmentation(policy="augmix"), augment_on="device")
    with pytest.raises(UserInputError, match="data.augment.erasing runs in the loader workers only"):
        GemDataModule(None, augment=Augmentation(erasing=0.5), augment_on="device")


def first_training_batch(data_dir, cache, augment: Augmentation) -> torch.Tensor:
    datamodule = GemDataModule(str(data_dir), **datamodule_kwargs(cache, augment=augment, val_fraction=0.3, seed=1))
    datamodule.prepare_data()
    datamodule.setup("fit")
    torch.manual_seed(0)
    return next(iter(datamodule.train_dataloader()))[0]


@pytest.fixture(scope="module")
def folder_and_stream(tmp_path_factory):
    root = tmp_path_factory.mktemp("policies")
    folder = make_dataset(root / "gems", train_per_class=6, test_per_class=2)
    optimize_dataset(folder, str(root / "stream"), image_size=32, val_fraction=0.3, seed=1, num_workers=1)
    return folder, root / "stream"


@pytest.mark.parametrize("source", ["folder", "stream"])
def test_the_policy_and_erasing_reach_the_training_batches_of_folders_and_streams(source, folder_and_stream, isolated_cache):
    data_dir = folder_and_stream[source == "stream"]
    plain = first_training_batch(data_dir, isolated_cache, Augmentation(**STILL))
    policy = first_training_batch(data_dir, isolated_cache, Augmentation(**STILL, policy="trivialaugment", erasing=0.5))
    assert policy.dtype == plain.dtype == torch.uint8 and policy.shape == plain.shape
    assert not torch.equal(policy, plain)


def test_a_short_fit_on_a_stream_trains_with_a_policy_in_the_loader_workers(folder_and_stream, isolated_cache, tmp_path):
    seed_everything(0)
    augment = Augmentation(policy="augmix", erasing=0.25)
    datamodule = GemDataModule(str(folder_and_stream[1]), **datamodule_kwargs(isolated_cache, num_workers=1, augment=augment))
    model = GemClassifier(datamodule.class_names, 32, network=TINY_NETWORK)
    trainer = Trainer(
        accelerator="cpu", max_epochs=1, logger=False, enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path
    )
    trainer.fit(model, datamodule=datamodule)
    assert trainer.global_step > 0 and torch.isfinite(trainer.callback_metrics["train/loss"])


@pytest.mark.slow
def test_a_cli_fit_on_a_folder_trains_with_a_policy_in_the_loader_workers(tiny_dataset, tmp_path, cpu_env):
    policy = ["--data.augment.policy", "randaugment", "--data.augment.randaugment_magnitude", "12", "--data.augment.erasing", "0.5"]
    run_cli("fit", *common(tmp_path, "policy"), "--data.data_dir", tiny_dataset, *TINY_MODEL, *policy, "--data.loader.num_workers", "1",
            "--trainer.max_epochs", "1", env=cpu_env, cwd=tmp_path)  # fmt: skip
    run = tmp_path / "runs" / "policy" / "version_0"
    augment = yaml.safe_load((run / "config.yaml").read_text())["data"]["augment"]
    assert (augment["policy"], augment["randaugment_magnitude"], augment["erasing"]) == ("randaugment", 12, 0.5)
    assert (run / "checkpoints" / "last.ckpt").is_file()


def test_preview_draws_the_policy_and_names_it(tiny_dataset, isolated_cache, tmp_path, monkeypatch):
    drawn = {}

    def record(images, titles, path, **options):
        if path.name == "augmentation_preview.png":
            drawn[path.parent.name] = (images, options.get("title", ""))
        return path

    monkeypatch.setattr(preview, "image_grid_png", record)
    for policy in ("none", "randaugment"):
        augment = Augmentation(**STILL, policy=policy, erasing=0.5 if policy != "none" else 0.0)
        datamodule = GemDataModule(str(tiny_dataset), **datamodule_kwargs(isolated_cache, augment=augment))
        datamodule.prepare_data()
        datamodule.setup("fit")
        preview.augmentation_preview(datamodule, tmp_path / policy, n_augmented=6, n_batch=4)
    plain, title = drawn["none"]
    assert all(np.array_equal(image, plain[1]) for image in plain[1:]) and "(" not in title
    with_policy, title = drawn["randaugment"]
    assert not all(np.array_equal(image, with_policy[1]) for image in with_policy[1:])
    assert title.endswith("(randaugment (2 ops, magnitude 9), erasing 0.5)")


@pytest.mark.slow
def test_the_preview_command_takes_the_policy_settings(tiny_dataset, tmp_path, cpu_env):
    policy = ["--data.augment.policy", "augmix", "--data.augment.erasing", "0.3"]
    small = ["--data.image_size", "32", "--data.loader.num_workers", "0", "--trainer.logger", "false"]
    result = run_cli("preview", "--out", tmp_path / "out", "--data.data_dir", tiny_dataset, *policy, *small, env=cpu_env, cwd=tmp_path)
    assert (tmp_path / "out" / "augmentation_preview.png").stat().st_size > 0 and "Wrote" in result.stdout


@pytest.mark.slow
def test_the_benchmark_dry_runs_every_policy_on_a_tiny_set(tmp_path, isolated_cache, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    monkeypatch.chdir(tmp_path)
    import augment_policies

    data = make_dataset(tmp_path / "gems", train_per_class=4, test_per_class=2)
    tiny = ["--model.network", "VGGSpec", *TINY_MODEL, "--data.image_size", "32", "--trainer.max_epochs", "1",
            "--trainer.accelerator", "cpu", "--data.loader.num_workers", "0"]  # fmt: skip
    augment_policies.main(["--data-dir", str(data), "--", *tiny])
    table = capsys.readouterr().out
    for policy in ("current", *POLICIES, "erasing"):
        assert f"| {policy} " in table

"""Training augmentation, in the loader (OpenCV) and on the device (a batch): the distribution of
torchvision's own per-image ops, and the same image from the same random draws."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from conftest import datamodule_kwargs
from helpers import TINY_NETWORK
from lightning.pytorch import Trainer

from gem_lightning.data.augmentation import Augmentation
from gem_lightning.data.batch_augment import BatchAugment
from gem_lightning.data.datamodule import GemDataModule
from gem_lightning.data.transforms import cache_size_for, eval_transform, torchvision_transform, train_transform
from gem_lightning.errors import UserInputError
from gem_lightning.training.module import GemClassifier

SIZE = 56
CACHE = cache_size_for(SIZE)  # 65
OFF = Augmentation(rotation=0, zoom=0, shift=0, shear=0, hflip=False)
BLACK = dict(fill=(0, 0, 0))


def gradient_image(size: int = CACHE) -> torch.Tensor:
    y, x = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    return torch.stack([x * 255 // size, y * 255 // size, (x + y) * 127 // size]).to(torch.uint8)


def dot_image(x: int, y: int, size: int = CACHE) -> torch.Tensor:
    image = torch.zeros(3, size, size, dtype=torch.uint8)
    image[:, y - 1 : y + 2, x - 1 : x + 2] = 255
    return image


def line_image(size: int = CACHE) -> torch.Tensor:
    image = torch.zeros(3, size, size, dtype=torch.uint8)
    image[:, size // 2 - 1 : size // 2 + 2, size // 4 : 3 * size // 4] = 255
    return image


def draws(image: torch.Tensor, augment: Augmentation, n: int = 400) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``n`` draws of torchvision's own ops (the reference), and of our loader and device paths."""
    torch.manual_seed(0)
    reference, loader = torchvision_transform(SIZE, augment), train_transform(SIZE, augment)
    ours = {
        "loader": torch.stack([loader(image) for _ in range(n)]).float(),
        "device": BatchAugment(augment, SIZE)(image.unsqueeze(0).repeat(n, 1, 1, 1)),
    }
    return torch.stack([reference(image) for _ in range(n)]).float(), ours


def moments(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per image: total brightness, centroid x and y, and the orientation (degrees) of the bright pixels."""
    weight = images.mean(1)
    h, w = weight.shape[-2:]
    y, x = torch.meshgrid(torch.arange(h, dtype=torch.float), torch.arange(w, dtype=torch.float), indexing="ij")
    mass = weight.sum((-1, -2))
    cx, cy = (weight * x).sum((-1, -2)) / mass, (weight * y).sum((-1, -2)) / mass
    dx, dy = x - cx.view(-1, 1, 1), y - cy.view(-1, 1, 1)
    mu20, mu02, mu11 = ((weight * d).sum((-1, -2)) / mass for d in (dx * dx, dy * dy, dx * dy))
    angle = torch.rad2deg(0.5 * torch.atan2(2 * mu11, mu20 - mu02))
    return mass, cx, cy, angle


def assert_same_distribution(a: torch.Tensor, b: torch.Tensor, mean_tol: float = 0.0, std_rel: float = 0.15) -> None:
    """Means within 4 standard errors (or ``mean_tol``), standard deviations within ``std_rel``."""
    standard_error = math.sqrt(a.var() / len(a) + b.var() / len(b))
    assert abs(a.mean() - b.mean()) < max(4 * standard_error, mean_tol), (a.mean(), b.mean(), standard_error)
    assert abs(a.std() - b.std()) < std_rel * a.std() + 1e-3, (a.std(), b.std())


def test_shapes_and_dtypes_also_under_autocast():
    images = torch.randint(0, 256, (4, 3, CACHE, CACHE), dtype=torch.uint8)
    augment = BatchAugment(Augmentation(brightness=0.2, contrast=0.2, saturation=0.2, vflip=True), SIZE)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = augment(images)
    assert out.shape == (4, 3, SIZE, SIZE) and out.dtype == torch.float32
    assert out.min() >= 0 and out.max() <= 255


def test_all_off_equals_the_evaluation_resize():
    image = gradient_image()
    out = BatchAugment(OFF, SIZE)(image.unsqueeze(0).repeat(2, 1, 1, 1))
    expected = eval_transform(SIZE)(image).float()
    assert (out - expected).abs().max() <= 2.0


def test_dot_position_has_the_torchvision_distribution():
    reference, ours = draws(dot_image(45, 22), Augmentation(hflip=False, **BLACK))  # flips: tested below
    for images in ours.values():
        for a, b in zip(moments(reference)[1:3], moments(images)[1:3]):
            assert a.std() > 1.5  # the test has teeth: the dot moves
            assert_same_distribution(a, b)


def test_rotation_of_a_line_has_the_torchvision_distribution():
    reference, ours = draws(line_image(), Augmentation(**BLACK))
    a = moments(reference)[3]
    assert a.std() == pytest.approx(25 / math.sqrt(3), rel=0.15)  # uniform in +-25 degrees
    for images in ours.values():
        assert_same_distribution(a, moments(images)[3])


def test_random_resized_crop_has_the_torchvision_distribution():
    augment = Augmentation(crop_scale=(0.35, 1.0), rotation=10, **BLACK)
    reference, ours = draws(dot_image(38, 28), augment, n=1000)
    mass_a, *stats_a = moments(reference)
    seen_a = mass_a > 1
    for images in ours.values():
        mass_b, *stats_b = moments(images)
        seen_b = mass_b > 1
        assert abs(seen_a.float().mean() - seen_b.float().mean()) < 0.08  # how often the crop keeps the dot
        for a, b in zip(stats_a[:2], stats_b[:2]):
            assert_same_distribution(a[seen_a], b[seen_b], std_rel=0.2)
        assert_same_distribution(mass_a[seen_a], mass_b[seen_b], std_rel=0.25)  # zoom


@pytest.mark.parametrize("crop", [False, True])
def test_loader_and_device_make_the_same_image_from_the_same_draws(crop):
    augment = Augmentation(rotation=180, shear=10, vflip=True, crop_scale=(0.5, 1.0) if crop else None)
    image = gradient_image()
    for seed in range(10):
        torch.manual_seed(seed)
        loader = train_transform(SIZE, augment)(image).float()
        torch.manual_seed(seed)
        device = BatchAugment(augment, SIZE)(image.unsqueeze(0))[0]
        difference = (loader - device).abs()
        if crop:  # the loader resizes the crop first (antialiased), then warps: two resamples
            assert difference.mean() < 1 and (difference > 3).float().mean() < 0.03  # pixels on the crop edge
        else:  # one bilinear resample each: equal up to uint8 rounding
            assert difference.max() <= 1


def test_rotate90_turns_by_exact_quarter_turns_all_four_ways():
    image = gradient_image()
    square = eval_transform(SIZE)(image).float()
    turns = [torch.rot90(square, k, dims=(-2, -1)) for k in range(4)]
    augment = dataclasses.replace(OFF, rotate90=True)
    torch.manual_seed(0)
    outputs = {
        "loader": torch.stack([train_transform(SIZE, augment)(image) for _ in range(40)]).float(),
        "device": BatchAugment(augment, SIZE)(image.unsqueeze(0).repeat(40, 1, 1, 1)),
    }
    for path, out in outputs.items():
        errors = torch.stack([(out - turn).abs().flatten(1).max(1).values for turn in turns], 1)  # (40, 4)
        assert (errors.min(1).values <= 2.0).all(), path  # each output is one exact quarter turn
        assert set(errors.argmin(1).tolist()) == {0, 1, 2, 3}, path  # and every turn is drawn


def test_flips_happen_half_of_the_time():
    image = dot_image(12, 12)
    out = BatchAugment(Augmentation(rotation=0, zoom=0, shift=0, shear=0, hflip=True, vflip=True), SIZE)(
        image.unsqueeze(0).repeat(400, 1, 1, 1)
    )
    _, cx, cy, _ = moments(out)
    assert 0.4 < (cx > SIZE / 2).float().mean() < 0.6
    assert 0.4 < (cy > SIZE / 2).float().mean() < 0.6
    assert 0.15 < ((cx > SIZE / 2) & (cy > SIZE / 2)).float().mean() < 0.35  # independent


def test_fill_colour_appears_in_the_corners_after_rotation():
    torch.manual_seed(0)
    fill = (10, 200, 30)
    image = torch.full((64, 3, CACHE, CACHE), 128, dtype=torch.uint8)
    out = BatchAugment(Augmentation(rotation=45, zoom=0, shift=0, shear=0, hflip=False, fill=fill), SIZE)(image)
    corner = out[:, :, 0, 0]
    filled = (corner - torch.tensor(fill, dtype=torch.float)).abs().amax(1) < 1
    assert filled.float().mean() > 0.7
    assert torch.allclose(out[:, :, SIZE // 2, SIZE // 2], torch.tensor(128.0))


def test_fill_leaves_no_seam_on_the_border():
    white = torch.full((16, 3, CACHE, CACHE), 255, dtype=torch.uint8)
    out = BatchAugment(Augmentation(rotation=30, zoom=0.2, shift=0.1, shear=10, fill=(255, 255, 255)), SIZE)(white)
    assert out.min() >= 254.5


def test_samples_in_a_batch_differ():
    torch.manual_seed(0)
    out = BatchAugment(Augmentation(brightness=0.3), SIZE)(gradient_image().unsqueeze(0).repeat(8, 1, 1, 1))
    flat = out.flatten(1)
    assert all((flat[i] - flat[j]).abs().mean() > 1 for i in range(8) for j in range(i + 1, 8))


def test_colour_jitter_has_the_torchvision_distribution():
    image = torch.zeros(3, CACHE, CACHE, dtype=torch.uint8)
    image[0], image[1, :, : CACHE // 2], image[2, : CACHE // 2] = 160, 90, 40
    augment = Augmentation(rotation=0, zoom=0, shift=0, shear=0, hflip=False, brightness=0.3, contrast=0.3, saturation=0.5)
    reference, ours = draws(image, augment)
    gray = lambda x: (x * torch.tensor([0.2989, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1)  # noqa: E731
    brightness = lambda x: gray(x).mean((1, 2))  # noqa: E731
    contrast = lambda x: gray(x).std((1, 2)) / gray(x).mean((1, 2))  # noqa: E731  (brightness and saturation keep it)
    saturation = lambda x: (x.amax(1) - x.amin(1)).mean((1, 2))  # noqa: E731
    for stat in (brightness, contrast, saturation):
        for images in ours.values():
            assert_same_distribution(stat(reference), stat(images), std_rel=0.2)


def test_hue_on_the_device_is_refused(tiny_dataset, isolated_cache):
    with pytest.raises(UserInputError, match="hue"):
        BatchAugment(Augmentation(hue=0.1), SIZE)
    with pytest.raises(UserInputError, match="augment_on=loader"):
        GemDataModule(str(tiny_dataset), augment=Augmentation(hue=0.1), augment_on="device", **datamodule_kwargs(isolated_cache))


class Recorder(GemClassifier):
    """Records what reaches training_step and validation_step."""

    seen: list

    def training_step(self, batch, batch_idx):
        self.seen.append(("train", tuple(batch[0].shape), batch[0].dtype))
        return super().training_step(batch, batch_idx)

    def validation_step(self, batch, batch_idx):
        self.seen.append(("val", tuple(batch[0].shape), batch[0].dtype))
        return super().validation_step(batch, batch_idx)


def test_datamodule_augments_training_batches_on_the_device(tiny_dataset, isolated_cache, tmp_path):
    datamodule = GemDataModule(
        str(tiny_dataset), augment_on="device", **datamodule_kwargs(isolated_cache, augment=Augmentation(vflip=True, brightness=0.2))
    )
    datamodule.prepare_data()
    datamodule.setup("fit")
    images, _, _ = next(iter(datamodule.train_dataloader()))
    assert images.shape[-2:] == (cache_size_for(32),) * 2 and images.dtype == torch.uint8  # un-augmented, cache size

    model = Recorder(datamodule.class_names, 32, network=TINY_NETWORK)
    model.seen = []
    # The model summary (on by default) sends the example input through the same hook.
    trainer = Trainer(
        accelerator="cpu", max_steps=2, val_check_interval=2, logger=False, enable_progress_bar=False, default_root_dir=tmp_path
    )
    trainer.fit(model, datamodule=datamodule)
    assert trainer.global_step == 2
    train = [s for s in model.seen if s[0] == "train"]
    val = [s for s in model.seen if s[0] == "val"]
    assert len(train) == 2 and all(shape[1:] == (3, 32, 32) and dtype == torch.float32 for _, shape, dtype in train)
    assert val and all(shape[1:] == (3, 32, 32) and dtype == torch.uint8 for _, shape, dtype in val)  # evaluation untouched
    assert datamodule.hparams["augment_on"] == "device"

"""Where the model looks: Grad-CAM of a network trained on pictures whose class is one drawn shape
peaks on the shape; the maps leave the network as they found it."""

from __future__ import annotations

import importlib.metadata

import numpy as np
import pytest
import torch
from torch import nn

from gem_lightning.models import TimmSpec, VGGSpec
from gem_lightning.models.classifier import ImageClassifier
from gem_lightning.reports.cam import class_activation_maps, overlay, peak

SIZE, SHAPE = 40, 11


def shapes(count: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor, list[tuple[int, int]]]:
    """Noise pictures with one bright shape at a random place: a square (class 0) or a disc (class 1);
    returns the uint8 images, the classes and each shape's top-left corner."""
    images = rng.normal(110, 35, (count, SIZE, SIZE, 3))
    labels = rng.integers(0, 2, count)
    rows, cols = np.mgrid[:SIZE, :SIZE]
    corners = []
    for i in range(count):
        r, c = (int(v) for v in rng.integers(2, SIZE - SHAPE - 2, 2))
        if labels[i] == 0:
            images[i, r : r + SHAPE, c : c + SHAPE] = 250
        else:
            images[i][(rows - r - SHAPE / 2) ** 2 + (cols - c - SHAPE / 2) ** 2 <= (SHAPE / 2 + 0.7) ** 2] = 250
        corners.append((r, c))
    pixels = torch.from_numpy(np.clip(images, 0, 255).astype(np.uint8)).permute(0, 3, 1, 2)
    return pixels, torch.from_numpy(labels), corners


@pytest.fixture(scope="module")
def trained() -> tuple[ImageClassifier, VGGSpec]:
    """A small VGG trained a few epochs to tell squares from discs (about 5 s on one core)."""
    torch.manual_seed(0)
    images, labels, _ = shapes(400, np.random.default_rng(0))
    spec = VGGSpec(channels=(16, 32, 32), pools=("max", "none", "none"), batch_norm=True, head="gap", hidden_units=0, dropout=0.0)
    model = ImageClassifier(spec.build(2, SIZE), (0.5,) * 3, (0.5,) * 3, channels_last=False)
    optimizer = torch.optim.Adam(model.parameters(), 3e-3)
    for _ in range(6):
        for batch in torch.randperm(len(images)).split(32):
            loss = nn.functional.cross_entropy(model(images[batch]), labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval(), spec


def test_the_activation_map_peaks_on_the_shape_that_decides_the_class(trained):
    model, spec = trained
    images, labels, corners = shapes(40, np.random.default_rng(1))
    with torch.no_grad():
        assert (model(images).argmax(1) == labels).float().mean() >= 0.95  # it learned the task
    maps = class_activation_maps(model, spec.cam_layer(model.network), images, labels.tolist())
    assert maps.shape == (40, SIZE, SIZE) and maps.min() >= 0 and maps.max() <= 1
    on_shape = [r - 2 <= peak(m)[0] <= r + SHAPE + 2 and c - 2 <= peak(m)[1] <= c + SHAPE + 2 for m, (r, c) in zip(maps, corners)]
    assert np.mean(on_shape) >= 0.9


def test_maps_run_inside_inference_mode_and_leave_the_network_as_it_was(trained):
    model, spec = trained
    images, labels, _ = shapes(2, np.random.default_rng(2))
    grads_before = [p.grad.clone() for p in model.parameters()]  # from the last training step
    model.train()
    with torch.inference_mode():  # as in Lightning's test loop, where the reports draw
        maps = class_activation_maps(model, spec.cam_layer(model.network), images, labels.tolist())
    assert model.training and all(p.requires_grad for p in model.parameters())
    assert all(torch.equal(before, p.grad) for before, p in zip(grads_before, model.parameters()))
    model.eval()
    picture = overlay(images[0].permute(1, 2, 0).numpy(), maps[0])
    assert picture.shape == (SIZE, SIZE, 3) and picture.dtype == np.uint8


def test_timm_backbones_map_their_last_feature_map():
    spec = TimmSpec(name="tf_efficientnet_lite0")
    network = spec.build(3, 64)
    model = ImageClassifier(network, (0.5,) * 3, (0.5,) * 3)
    assert spec.cam_layer(network) is network.bn2  # the map forward_features returns, before pooling
    maps = class_activation_maps(model, spec.cam_layer(network), torch.randint(0, 255, (2, 3, 64, 64), dtype=torch.uint8), [0, 2])
    assert maps.shape == (2, 64, 64) and np.isfinite(maps).all()


def test_grad_cam_brings_no_second_opencv():
    """grad-cam >= 1.5.7 asks for opencv-python-headless, the project's OpenCV; an opencv-python beside it
    would share the cv2 folder, and removing either package would break ``import cv2``."""
    assert any(r.startswith("opencv-python-headless") for r in importlib.metadata.requires("grad-cam"))
    with pytest.raises(importlib.metadata.PackageNotFoundError):
        importlib.metadata.distribution("opencv-python")

"""Where a trained network looks: Grad-CAM class activation maps (the ``grad-cam`` package's
``GradCAM``) and their overlay on the photo, for the reports' misclassified gallery and the serve page.

The layer is the spec's :meth:`~gem_lightning.models.NetworkSpec.cam_layer` (the last feature map
before pooling). Maps are computed in float32 with gradients on, whatever inference mode or
autocast the caller is in, and without touching the network's parameters' gradients.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.image import show_cam_on_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from gem_lightning.data.cache import DecodeSettings
from gem_lightning.data.images import BadImageError
from gem_lightning.data.transforms import eval_transform


@contextmanager
def gradients_for_maps(model: nn.Module) -> Iterator[None]:
    """Eval mode, gradients on, parameters frozen, no autocast; all restored after, the parameters'
    ``.grad`` too (``GradCAM`` calls ``model.zero_grad()``, which would drop a training step's gradients)."""
    training = model.training
    frozen = [(p, p.requires_grad, p.grad) for p in model.parameters()]
    device_type = next(model.parameters()).device.type
    try:
        model.eval()
        for parameter, _, _ in frozen:
            parameter.requires_grad_(False)
        with torch.inference_mode(False), torch.enable_grad(), torch.autocast(device_type, enabled=False):
            yield
    finally:
        for parameter, wanted, grad in frozen:
            parameter.requires_grad_(wanted)
            parameter.grad = grad
        model.train(training)


def class_activation_maps(model: nn.Module, layer: nn.Module, images: torch.Tensor, classes: Sequence[int]) -> np.ndarray:
    """``(B, S, S)`` maps in [0, 1] of where ``layer``'s features raise each image's class score.

    Args:
        model: takes ``(B, 3, S, S)`` images as ``images`` holds them (an ``ImageClassifier``: 0-255).
        layer: a module inside ``model`` with a spatial output (``spec.cam_layer(network)``).
        images: the batch, any dtype (a copy in float32 is used).
        classes: the class whose evidence is mapped, one per image (e.g. the predicted one).
    """
    with gradients_for_maps(model):
        device = next(model.parameters()).device
        inputs = images.detach().clone().float().to(device).requires_grad_(True)
        with GradCAM(model=model, target_layers=[layer]) as cam:
            maps = cam(input_tensor=inputs, targets=[ClassifierOutputTarget(int(c)) for c in classes])
    return np.nan_to_num(np.asarray(maps, dtype=np.float32))


def overlay(image: np.ndarray, heatmap: np.ndarray, weight: float = 0.5) -> np.ndarray:
    """The ``HxWx3`` uint8 photo with the map drawn over it in colour (red: most evidence), at the photo's size."""
    if heatmap.shape != image.shape[:2]:
        heatmap = (
            np.asarray(Image.fromarray((heatmap * 255).astype(np.uint8)).resize(image.shape[1::-1], Image.Resampling.BILINEAR)) / 255.0
        )
    return show_cam_on_image(image.astype(np.float32) / 255.0, heatmap.astype(np.float32), use_rgb=True, image_weight=1.0 - weight)


def peak(heatmap: np.ndarray) -> tuple[int, int]:
    """``(row, column)`` of the map's highest value."""
    return tuple(int(v) for v in np.unravel_index(int(np.argmax(heatmap)), heatmap.shape))


def file_overlays(
    model: nn.Module,
    layer: nn.Module,
    paths: Sequence[Path],
    classes: Sequence[int],
    settings: DecodeSettings,
    image_size: int,
    batch_size: int = 16,
) -> list[np.ndarray | None]:
    """The overlay of each photo, as the model saw it (decoded with ``settings``, resized to
    ``image_size``), for its class in ``classes``; None for a photo that cannot be decoded."""
    transform = eval_transform(image_size)
    readable, images = [], []
    for index, path in enumerate(paths):
        try:
            images.append(transform(torch.from_numpy(settings.decode(path)).permute(2, 0, 1)))
            readable.append(index)
        except BadImageError:
            continue
    overlays: list[np.ndarray | None] = [None] * len(paths)
    for start in range(0, len(readable), batch_size):
        batch = torch.stack(images[start : start + batch_size])
        chosen = readable[start : start + batch_size]
        maps = class_activation_maps(model, layer, batch, [classes[i] for i in chosen])
        for index, image, heatmap in zip(chosen, batch, maps):
            overlays[index] = overlay(image.permute(1, 2, 0).numpy(), heatmap)
    return overlays


def overlay_data_url(module: nn.Module, image: torch.Tensor, label: int) -> str:
    """``image`` (``(3, S, S)`` uint8, as the model sees it) with the map of ``label`` over it, as a
    ``data:image/png;base64,...`` URL a web page shows as it is. ``module`` is a ``GemClassifier``
    (its ``model`` and ``network_spec``)."""
    layer = module.network_spec.cam_layer(module.model.network)
    heatmap = class_activation_maps(module.model, layer, image[None], [label])[0]
    buffer = io.BytesIO()
    Image.fromarray(overlay(image.permute(1, 2, 0).cpu().numpy(), heatmap)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")

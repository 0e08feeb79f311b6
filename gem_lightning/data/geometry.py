"""Random training geometry drawn as torchvision draws it, as one affine map per sample.

Both augmentation paths sample here, so they follow one distribution: the loader warps each image
with OpenCV (:class:`~gem_lightning.data.transforms.TrainAugment`), the device warps a whole batch
with ``grid_sample`` (:class:`~gem_lightning.data.batch_augment.BatchAugment`). A map is
``affine_grid``'s ``theta``: it takes output coordinates to coordinates in the *frame* the affine
works on (the cached image, or the image_size crop when a random-resized crop comes first), both
normalised to [-1, 1] with ``align_corners=False``.
"""

from __future__ import annotations

import math

import torch

from gem_lightning.data.augmentation import Augmentation


def uniform(n: int, low: float, high: float, device: torch.device | str) -> torch.Tensor:
    return torch.empty(n, device=device).uniform_(low, high)


def _affine_inverse(augment: Augmentation, n: int, frame: tuple[int, int], zoom_shift: bool, device) -> tuple[torch.Tensor, torch.Tensor]:
    """torchvision's inverse affine (rotation, scale, x-shear, integer translation, about the
    centre), in pixels: returns the 2x2 matrices ``L`` and translations ``t`` of ``p = L (u - t)``."""
    a, (height, width) = augment, frame
    angle = torch.deg2rad(uniform(n, -a.rotation, a.rotation, device))
    if a.rotate90:
        angle = angle + torch.randint(0, 4, (n,), device=device) * (math.pi / 2)
    shear = torch.deg2rad(uniform(n, -a.shear, a.shear, device))
    scale = uniform(n, 1 - a.zoom, 1 + a.zoom, device) if zoom_shift and a.zoom else torch.ones(n, device=device)
    t = torch.zeros(n, 2, device=device)
    if zoom_shift and a.shift:
        t[:, 0] = uniform(n, -a.shift * width, a.shift * width, device).round()
        t[:, 1] = uniform(n, -a.shift * height, a.shift * height, device).round()
    cos, sin, tan = angle.cos(), angle.sin(), shear.tan()
    b, d = -cos * tan - sin, -sin * tan + cos  # forward matrix [[cos, b], [sin, d]], det 1
    inverse = torch.stack([torch.stack([d, -b], -1), torch.stack([-sin, cos], -1)], -2)
    return inverse / scale.view(n, 1, 1), t


def sample_theta(augment: Augmentation, n: int, frame: tuple[int, int], device: torch.device | str = "cpu") -> torch.Tensor:
    """``n`` random maps ``(n, 2, 3)`` from the output to ``frame`` (height, width): rotation, shear,
    zoom and shift (zoom and shift only without a random-resized crop, which replaces them), the
    resize to the output size, and the flips."""
    zoom_shift = augment.crop_scale is None
    inverse, t = _affine_inverse(augment, n, frame, zoom_shift, device)
    half = torch.tensor([frame[1] / 2, frame[0] / 2], device=device)
    flips = torch.ones(n, 2, device=device)
    if augment.hflip:
        flips[:, 0] = torch.where(torch.rand(n, device=device) < 0.5, -1.0, 1.0)
    if augment.vflip:
        flips[:, 1] = torch.where(torch.rand(n, device=device) < 0.5, -1.0, 1.0)
    linear = inverse * half.view(1, 1, 2) / half.view(1, 2, 1) * flips.view(n, 1, 2)
    offset = -(inverse @ t.unsqueeze(-1)).squeeze(-1) / half
    return torch.cat([linear, offset.unsqueeze(-1)], -1)


def sample_crop_boxes(augment: Augmentation, n: int, height: int, width: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """RandomResizedCrop boxes ``(n, 4)`` as ``(top, left, h, w)``: 10 tries per sample, else the
    centre crop of the nearest allowed aspect ratio, as torchvision does."""
    lo, hi = augment.crop_scale
    tries = (n, 10)
    area = height * width * torch.empty(tries, device=device).uniform_(lo, hi)
    ratio = torch.exp(torch.empty(tries, device=device).uniform_(math.log(3 / 4), math.log(4 / 3)))
    w, h = (area * ratio).sqrt().round(), (area / ratio).sqrt().round()
    ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = torch.where(ok.any(1), ok.float().argmax(1), -1)
    pick = first.clamp_min(0).view(n, 1)
    w, h = w.gather(1, pick).squeeze(1), h.gather(1, pick).squeeze(1)
    fb_w, fb_h = width, height
    if width / height < 3 / 4:
        fb_h = round(width * 4 / 3)
    elif width / height > 4 / 3:
        fb_w = round(height * 4 / 3)
    w, h = torch.where(first < 0, float(fb_w), w), torch.where(first < 0, float(fb_h), h)
    top = torch.where(first < 0, ((height - h) / 2).round(), (torch.rand(n, device=device) * (height - h + 1)).floor())
    left = torch.where(first < 0, ((width - w) / 2).round(), (torch.rand(n, device=device) * (width - w + 1)).floor())
    return torch.stack([top, left, h, w], 1)


def pixel_map(theta: torch.Tensor, frame: tuple[int, int], size: int) -> torch.Tensor:
    """Maps ``theta`` (..., 2, 3) as maps from output pixel centres to frame pixel centres (OpenCV's
    ``WARP_INVERSE_MAP`` convention: pixel ``i`` is centred at ``i``)."""
    height, width = frame
    to_normalised = torch.tensor([[2 / size, 0, 1 / size - 1], [0, 2 / size, 1 / size - 1], [0, 0, 1]], dtype=theta.dtype)
    to_pixels = torch.tensor([[width / 2, 0, (width - 1) / 2], [0, height / 2, (height - 1) / 2]], dtype=theta.dtype)
    last_row = torch.tensor([0, 0, 1], dtype=theta.dtype).expand(*theta.shape[:-2], 1, 3)
    return to_pixels @ torch.cat([theta, last_row], -2) @ to_normalised

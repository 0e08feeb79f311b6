"""The training augmentation applied to a whole batch on the accelerator (``data.augment_on: device``).

:class:`BatchAugment` reproduces :func:`~gem_lightning.data.transforms.train_transform` on a batch of
cached ``(B, 3, S, S)`` uint8 images, with independent random parameters per sample, drawn as
torchvision v2 draws them. The random affine (or random-resized crop followed by rotation and
shear), the resize to ``image_size`` and the flips are folded into one sampling grid per sample: a
single ``affine_grid`` + ``grid_sample``. Areas the warp uncovers take the ``fill`` colour,
composited by each output pixel's exact bilinear coverage (no darker seam along the border).
Brightness, contrast and saturation jitter follow with per-sample factors, in a per-sample random
order as ``ColorJitter`` does. Differences from the per-image path: no uint8 rounding between
steps, bilinear sampling without antialiasing (the resize from the cache is a mild 1/1.15 shrink),
and crops interpolate with the pixels just outside the crop box. Hue jitter is not supported.
Output: float ``(B, 3, image_size, image_size)`` in 0-255, computed in float32 even under autocast.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from gem_lightning.data.transforms import Augmentation
from gem_lightning.errors import UserInputError

GRAY = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale weights


def _uniform(n: int, low: float, high: float, device: torch.device) -> torch.Tensor:
    return torch.empty(n, device=device).uniform_(low, high)


class BatchAugment(torch.nn.Module):
    """Per-sample random geometry and colour on a batch; see the module docstring.

    Args:
        augment: the augmentation settings (as for the per-image pipeline).
        image_size: side of the square output.
    """

    def __init__(self, augment: Augmentation, image_size: int) -> None:
        super().__init__()
        if augment.hue:
            raise UserInputError(
                f"data.augment.hue={augment.hue} is not supported with data.augment_on=device; "
                "set hue to 0 or use data.augment_on=loader."
            )
        self.augment = augment
        self.image_size = image_size

    def extra_repr(self) -> str:
        return f"image_size={self.image_size}, augment={self.augment}"

    def _affine_inverse(self, n: int, size: tuple[int, int], zoom_shift: bool, device) -> tuple[torch.Tensor, torch.Tensor]:
        """torchvision's inverse affine (rotation, scale, x-shear, integer translation, about the
        centre), in pixels: returns the 2x2 matrices ``L`` and translations ``t`` of ``p = L (u - t)``."""
        a, height, width = self.augment, *size
        angle = torch.deg2rad(_uniform(n, -a.rotation, a.rotation, device))
        shear = torch.deg2rad(_uniform(n, -a.shear, a.shear, device))
        scale = _uniform(n, 1 - a.zoom, 1 + a.zoom, device) if zoom_shift and a.zoom else torch.ones(n, device=device)
        t = torch.zeros(n, 2, device=device)
        if zoom_shift and a.shift:
            t[:, 0] = _uniform(n, -a.shift * width, a.shift * width, device).round()
            t[:, 1] = _uniform(n, -a.shift * height, a.shift * height, device).round()
        cos, sin, tan = angle.cos(), angle.sin(), shear.tan()
        b, d = -cos * tan - sin, -sin * tan + cos  # forward matrix [[cos, b], [sin, d]], det 1
        inverse = torch.stack([torch.stack([d, -b], -1), torch.stack([-sin, cos], -1)], -2)
        return inverse / scale.view(n, 1, 1), t

    def _crop_boxes(self, n: int, height: int, width: int, device) -> torch.Tensor:
        """RandomResizedCrop boxes ``(top, left, h, w)``: 10 tries per sample, else the centre crop."""
        lo, hi = self.augment.crop_scale
        tries = (n, 10)
        area = height * width * torch.empty(tries, device=device).uniform_(lo, hi)
        ratio = torch.exp(torch.empty(tries, device=device).uniform_(math.log(3 / 4), math.log(4 / 3)))
        w, h = (area * ratio).sqrt().round(), (area / ratio).sqrt().round()
        ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
        first = torch.where(ok.any(1), ok.float().argmax(1), -1)
        pick = first.clamp_min(0).view(n, 1)
        w, h = w.gather(1, pick).squeeze(1), h.gather(1, pick).squeeze(1)
        fb_w, fb_h = width, height  # torchvision's fallback: the centre crop of the nearest allowed ratio
        if width / height < 3 / 4:
            fb_h = round(width * 4 / 3)
        elif width / height > 4 / 3:
            fb_w = round(height * 4 / 3)
        w, h = torch.where(first < 0, float(fb_w), w), torch.where(first < 0, float(fb_h), h)
        top = torch.where(first < 0, ((height - h) / 2).round(), (torch.rand(n, device=device) * (height - h + 1)).floor())
        left = torch.where(first < 0, ((width - w) / 2).round(), (torch.rand(n, device=device) * (width - w + 1)).floor())
        return torch.stack([top, left, h, w], 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        with torch.autocast(images.device.type, enabled=False):
            return self._forward(images)

    def _forward(self, images: torch.Tensor) -> torch.Tensor:
        a, device = self.augment, images.device
        n, _, height, width = images.shape
        size = self.image_size
        crop = a.crop_scale is not None
        # The affine works on the cached image (loader path: affine, then resize), or on the
        # image_size crop (crop path: crop-resize, then affine). Resizes are identities in
        # normalised coordinates, so output -> affine-input coordinates is one 2x3 matrix.
        frame = (size, size) if crop else (height, width)
        inverse, t = self._affine_inverse(n, frame, zoom_shift=not crop, device=device)  # crops replace zoom and shift
        half = torch.tensor([frame[1] / 2, frame[0] / 2], device=device)
        flips = torch.ones(n, 2, device=device)
        if a.hflip:
            flips[:, 0] = torch.where(torch.rand(n, device=device) < 0.5, -1.0, 1.0)
        if a.vflip:
            flips[:, 1] = torch.where(torch.rand(n, device=device) < 0.5, -1.0, 1.0)
        linear = inverse * half.view(1, 1, 2) / half.view(1, 2, 1) * flips.view(n, 1, 2)
        offset = -(inverse @ t.unsqueeze(-1)).squeeze(-1) / half
        theta = torch.cat([linear, offset.unsqueeze(-1)], -1)
        warped = F.affine_grid(theta, [n, 1, size, size], align_corners=False)  # affine-input frame
        # Bilinear weight of in-bounds pixels at each point = what a warp of an all-ones image gives.
        pixel = (warped + 1) * half - 0.5
        mask = torch.minimum(pixel + 1, 2 * half - pixel).clamp(0, 1).prod(-1).unsqueeze(1)
        if crop:  # crop-frame coordinates -> cached-image coordinates
            top, left, h, w = self._crop_boxes(n, height, width, device).unbind(1)
            scale = torch.stack([w / width, h / height], -1).view(n, 1, 1, 2)
            shift = torch.stack([(2 * left + w - width) / width, (2 * top + h - height) / height], -1).view(n, 1, 1, 2)
            warped = warped * scale + shift
        out = F.grid_sample(images.float(), warped, mode="bilinear", padding_mode="zeros", align_corners=False)
        fill = torch.tensor(a.fill, dtype=out.dtype, device=device).view(1, 3, 1, 1)
        out = out.add_((1 - mask) * fill)  # `out` is already weighted by coverage: no seam on the border
        return self._jitter(out)

    def _jitter(self, x: torch.Tensor) -> torch.Tensor:
        """Brightness, contrast and saturation with per-sample factors, in a per-sample random order."""
        a, n, device = self.augment, x.shape[0], x.device
        gray = torch.tensor(GRAY, device=device).view(1, 3, 1, 1)
        blends = [  # each blends the image with a reference: black, its mean gray, its gray
            (a.brightness, lambda x: torch.zeros_like(x[:, :1])),
            (a.contrast, lambda x: (x * gray).sum(1, keepdim=True).mean((2, 3), keepdim=True)),
            (a.saturation, lambda x: (x * gray).sum(1, keepdim=True)),
        ]
        jobs = [(_uniform(n, max(0.0, 1 - s), 1 + s, device).view(n, 1, 1, 1), ref) for s, ref in blends if s]
        order = torch.rand(n, len(jobs), device=device).argsort(1)  # as ColorJitter's randperm, per sample
        for slot in range(len(jobs)):
            for j, (factor, reference) in enumerate(jobs):
                ref = reference(x)
                step = ((x - ref) * factor + ref).clamp_(0, 255)
                x = step if len(jobs) == 1 else torch.where((order[:, slot] == j).view(n, 1, 1, 1), step, x)
        return x

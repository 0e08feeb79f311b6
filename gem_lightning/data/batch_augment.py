"""The training augmentation applied to a whole batch on the accelerator (``data.augment_on: device``).

:class:`BatchAugment` applies the loader's :func:`~gem_lightning.data.transforms.train_transform`
to a batch of cached ``(B, 3, S, S)`` uint8 images, with independent random parameters per sample
drawn by :mod:`~gem_lightning.data.geometry` (as torchvision v2 draws them). The random affine (or
random-resized crop followed by rotation and shear), the resize to ``image_size`` and the flips are
folded into one sampling grid per sample: a single ``affine_grid`` + ``grid_sample``. Areas the warp
uncovers take the ``fill`` colour, composited by each output pixel's exact bilinear coverage (no
darker seam along the border). Brightness, contrast and saturation jitter follow with per-sample
factors, in a per-sample random order as ``ColorJitter`` does. Differences from the loader path: no
uint8 rounding, no antialiasing when a crop is shrunk, and pixels on a crop's edge interpolate
with the pixels just outside the crop box. Hue jitter, the augmentation policies and random erasing
are not supported (they run in the loader).
Output: float ``(B, 3, image_size, image_size)`` in 0-255, computed in float32 even under autocast."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from gem_lightning.data.augmentation import Augmentation
from gem_lightning.data.geometry import sample_crop_boxes, sample_theta, uniform
from gem_lightning.errors import UserInputError

GRAY = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale weights


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
                f"data.augment.hue={augment.hue} is not supported with data.augment_on=device; set hue to 0 or use data.augment_on=loader."
            )
        if augment.policy != "none" or augment.erasing:
            raise UserInputError(
                f"data.augment.{'policy' if augment.policy != 'none' else 'erasing'} runs in the loader workers only, not with "
                "data.augment_on=device: use data.augment_on=loader, or policy none and erasing 0."
            )
        self.augment = augment
        self.image_size = image_size

    def extra_repr(self) -> str:
        return f"image_size={self.image_size}, augment={self.augment}"

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        with torch.autocast(images.device.type, enabled=False):
            return self._forward(images)

    def _forward(self, images: torch.Tensor) -> torch.Tensor:
        a, device = self.augment, images.device
        n, _, height, width = images.shape
        size = self.image_size
        crop = a.crop_scale is not None
        # The affine works on the cached image (affine, then resize), or on the image_size crop
        # (crop-resize, then affine). Resizes are identities in normalised coordinates.
        frame = (size, size) if crop else (height, width)
        theta = sample_theta(a, n, frame, device)
        warped = F.affine_grid(theta, [n, 1, size, size], align_corners=False)  # frame coordinates
        # Bilinear weight of in-bounds pixels at each point = what a warp of an all-ones image gives.
        half = torch.tensor([frame[1] / 2, frame[0] / 2], device=device)
        pixel = (warped + 1) * half - 0.5
        mask = torch.minimum(pixel + 1, 2 * half - pixel).clamp(0, 1).prod(-1).unsqueeze(1)
        if crop:  # crop-frame coordinates -> cached-image coordinates
            top, left, h, w = sample_crop_boxes(a, n, height, width, device).unbind(1)
            scale = torch.stack([w / width, h / height], -1).view(n, 1, 1, 2)
            shift = torch.stack([(2 * left + w - width) / width, (2 * top + h - height) / height], -1).view(n, 1, 1, 2)
            warped = warped * scale + shift
        out = F.grid_sample(images.float(), warped, mode="bilinear", padding_mode="zeros", align_corners=False)
        if crop:  # the cached image goes on beyond the crop box: weight by coverage of the crop instead
            out = out.mul_(mask)
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
        jobs = [(uniform(n, max(0.0, 1 - s), 1 + s, device).view(n, 1, 1, 1), ref) for s, ref in blends if s]
        order = torch.rand(n, len(jobs), device=device).argsort(1)  # as ColorJitter's randperm, per sample
        for slot in range(len(jobs)):
            for j, (factor, reference) in enumerate(jobs):
                ref = reference(x)
                step = ((x - ref) * factor + ref).clamp_(0, 255)
                x = step if len(jobs) == 1 else torch.where((order[:, slot] == j).view(n, 1, 1, 1), step, x)
        return x

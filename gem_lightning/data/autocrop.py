"""Crop a gemstone photo to the gem, as the original notebook did, without OpenCV.

The original Keras notebook found each gem with Canny edges on a 330x330 resize and cropped
to the edges' bounding box, keeping the whole photo when too few edges were found. This is
the same idea in torch/numpy, made sturdier for dealer photos:

* it works on a small copy (longest side about 256 px), so it costs a few milliseconds;
* a pixel counts as "gem" when it differs clearly from the background (the background is a
  smooth quadratic colour surface fitted to the photo's border, so plain, gradient and
  vignetted backdrops all work) or when it lies on a strong edge (Sobel gradient magnitude);
* both thresholds adapt to how noisy the border itself is, so JPEG noise and fabric or paper
  texture on the backdrop are not taken for the gem (a hard cast shadow still is: boxes
  tend to include the gem's shadow or reflection);
* the box spans the 1st to 99th percentile of the gem pixels' coordinates, so a stray
  watermark or speck of dust does not stretch it, then gets a 5% margin and is widened
  towards a square (the crop is later squeezed to a square, so this keeps the gem's shape).

Fallback: the whole image is kept when the gem pixels cover less than 1% of the picture
(nothing stands out: a blank or featureless photo) or more than 85% of it (the "gem" is
everywhere: a close-up, or a busy scene such as a stone held in a hand), and when the box
would cover nearly the whole picture anyway.

Speed: about 5-10 ms per photo on one CPU thread (the working copy is about 256 px). The
tensors are small, so torch's intra-op threads only add overhead; DataLoader workers already
run with one thread each, and a caller using this in the main process of a busy machine may
want ``torch.set_num_threads(1)``.
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

__all__ = ["autocrop", "gem_bounding_box"]

Box = tuple[int, int, int, int]

WORK_SIZE = 256  # longest side of the copy the box is computed on
BORDER_FRACTION = 0.04  # width of the frame used to learn the background, per side
MIN_FOREGROUND = 0.01  # below this fraction of gem pixels: nothing found, keep everything
MAX_FOREGROUND = 0.85  # above this fraction: the whole photo is "gem", keep everything
MAX_BOX_AREA = 0.95  # a box this big is not worth cropping to
PERCENTILES = (1.0, 99.0)  # robust extent of the gem pixels
MARGIN = 0.05  # added on every side, as a fraction of the box's size

# Adaptive thresholds: k times the border's own noise level, but never below the floor
# (values are on a 0..1 colour scale).
COLOUR_FLOOR, COLOUR_K = 0.10, 4.0
EDGE_FLOOR, EDGE_K = 0.12, 4.0

_LUMA = torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)


@contextmanager
def _single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def gem_bounding_box(image: np.ndarray) -> Box:
    """Return the gem's box ``(left, top, right, bottom)`` in ``image``'s pixel coordinates.

    ``image`` is an HxWx3 uint8 array. ``right``/``bottom`` are exclusive, as for
    ``PIL.Image.crop``. When no distinct gem is found the full image ``(0, 0, W, H)`` is
    returned (see the module docstring for when that happens).
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an HxWx3 uint8 array, got {image.shape} {image.dtype}")
    height, width = image.shape[:2]
    with _single_thread():  # tiny tensors: threads cost far more than they save (75x on 2 busy cores)
        small = _downscale(image)
        box = _box_on_small(small)
    if box is None:
        return (0, 0, width, height)
    return _scale_box(box, small.shape[1:], (height, width))


def autocrop(image: Image.Image) -> Image.Image:
    """Crop an RGB PIL image to its gem (or return it unchanged when none is found)."""
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    # Shrink with PIL first: far cheaper than turning a multi-megapixel photo into an array.
    preview = rgb
    if max(rgb.size) > 2 * WORK_SIZE:
        scale = 2 * WORK_SIZE / max(rgb.size)
        size = (max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale)))
        preview = rgb.resize(size, Image.Resampling.BOX)
    left, top, right, bottom = gem_bounding_box(np.asarray(preview))
    if (left, top, right, bottom) == (0, 0, *preview.size):
        return rgb
    sx, sy = rgb.width / preview.width, rgb.height / preview.height
    box = _clip_box(
        (round(left * sx), round(top * sy), round(right * sx), round(bottom * sy)),
        rgb.width,
        rgb.height,
    )
    return rgb.crop(box)


# --------------------------------------------------------------------------- steps


def _downscale(image: np.ndarray) -> torch.Tensor:
    """A (3, h, w) float tensor in 0..1 whose longest side is at most WORK_SIZE."""
    height, width = image.shape[:2]
    step = max(1, max(height, width) // (2 * WORK_SIZE))  # cheap decimation of huge inputs
    tensor = torch.from_numpy(np.array(image[::step, ::step], copy=True))
    tensor = tensor.permute(2, 0, 1).float().div_(255.0)
    scale = WORK_SIZE / max(tensor.shape[1:])
    if scale < 1.0:
        size = (max(1, round(tensor.shape[1] * scale)), max(1, round(tensor.shape[2] * scale)))
        tensor = F.interpolate(tensor[None], size=size, mode="area")[0]
    return tensor


def _box_on_small(image: torch.Tensor) -> Box | None:
    """The gem box on the small working copy, or None when the full image should be kept."""
    _, height, width = image.shape
    if min(height, width) < 8:
        return None
    blurred = _blur(image)
    border = _border_mask(height, width)
    foreground = _colour_foreground(blurred, border) | _edge_foreground(blurred, border)
    foreground &= ~_frame(height, width, 1)  # padding artefacts on the outermost pixels
    fraction = foreground.float().mean().item()
    if not MIN_FOREGROUND <= fraction <= MAX_FOREGROUND:
        return None
    box = _robust_extent(foreground)
    box = _add_margin(box, width, height)
    box = _towards_square(box, width, height)
    area = (box[2] - box[0]) * (box[3] - box[1])
    if area >= MAX_BOX_AREA * width * height:
        return None
    return box


def _blur(image: torch.Tensor) -> torch.Tensor:
    """3x3 binomial (Gaussian-like) blur per channel, edges replicated.

    Written as shifted sums: on CPU this is several times faster than a depthwise conv2d.
    """
    padded = F.pad(image[None], (1, 1, 1, 1), mode="replicate")[0]
    rows = padded[:, :-2] + 2.0 * padded[:, 1:-1] + padded[:, 2:]
    return (rows[:, :, :-2] + 2.0 * rows[:, :, 1:-1] + rows[:, :, 2:]) / 16.0


def _sobel_magnitude(gray: torch.Tensor) -> torch.Tensor:
    """Sobel gradient magnitude of an (h, w) image, normalised so a 0->1 step scores 1."""
    padded = F.pad(gray[None, None], (1, 1, 1, 1), mode="replicate")[0, 0]
    smooth_y = padded[:-2] + 2.0 * padded[1:-1] + padded[2:]  # (h, w + 2)
    smooth_x = padded[:, :-2] + 2.0 * padded[:, 1:-1] + padded[:, 2:]  # (h + 2, w)
    gx = (smooth_y[:, 2:] - smooth_y[:, :-2]) / 4.0
    gy = (smooth_x[2:] - smooth_x[:-2]) / 4.0
    return (gx.square() + gy.square()).sqrt_()


def _frame(height: int, width: int, thickness: int) -> torch.Tensor:
    mask = torch.zeros(height, width, dtype=torch.bool)
    mask[:thickness] = mask[-thickness:] = True
    mask[:, :thickness] = mask[:, -thickness:] = True
    return mask


def _border_mask(height: int, width: int) -> torch.Tensor:
    thickness = max(2, round(BORDER_FRACTION * min(height, width)))
    return _frame(height, width, thickness)


def _colour_foreground(image: torch.Tensor, border: torch.Tensor) -> torch.Tensor:
    """Pixels whose colour departs from the background surface fitted to the border."""
    background = _fit_background(image, border)
    distance = _channel_norm(image - background)
    threshold = _adaptive_threshold(distance[border], COLOUR_FLOOR, COLOUR_K)
    return distance > threshold


def _fit_background(image: torch.Tensor, border: torch.Tensor) -> torch.Tensor:
    """Least-squares quadratic colour surface through the border pixels.

    A quadratic in x and y models plain backdrops, linear ramps and the radial fall-off of a
    studio light or vignette. It is refitted on the border pixels that fit best, so a gem
    touching the edge of the photo does not drag the background towards its own colour.
    """
    _, height, width = image.shape
    xs = torch.linspace(-1.0, 1.0, width)
    ys = torch.linspace(-1.0, 1.0, height)
    border_ys, border_xs = torch.nonzero(border, as_tuple=True)
    design = _quadratic_terms(xs[border_xs], ys[border_ys])  # (n, 6)
    colours = image[:, border_ys, border_xs].T  # (n, 3)
    keep = torch.ones(colours.shape[0], dtype=torch.bool)
    for _ in range(2):
        coeffs = torch.linalg.lstsq(design[keep], colours[keep]).solution  # (6, 3)
        residual = _channel_norm((design @ coeffs - colours).T)
        keep = residual <= residual.quantile(0.6)
    # Evaluate the surface separably: far cheaper than building an (h, w, 6) design matrix.
    c = coeffs.T.reshape(3, 6, 1, 1)  # per channel: 1, x, y, x^2, y^2, xy
    x, y = xs.view(1, 1, width), ys.view(1, height, 1)
    along_x = c[:, 0] + (c[:, 1] + c[:, 3] * x) * x  # (3, 1, w)
    along_y = (c[:, 2] + c[:, 4] * y) * y  # (3, h, 1)
    return along_x + along_y + c[:, 5] * (y * x)


def _quadratic_terms(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    x, y = torch.broadcast_tensors(x, y)
    return torch.stack([torch.ones_like(x), x, y, x * x, y * y, x * y], dim=-1)


def _edge_foreground(image: torch.Tensor, border: torch.Tensor) -> torch.Tensor:
    """Pixels on strong edges (Sobel magnitude of the luminance)."""
    magnitude = _sobel_magnitude((image * _LUMA).sum(dim=0))
    threshold = _adaptive_threshold(magnitude[border], EDGE_FLOOR, EDGE_K)
    return magnitude > threshold


def _channel_norm(tensor: torch.Tensor) -> torch.Tensor:
    """Euclidean norm over the first (channel) axis; much faster than ``norm(dim=0)`` on CPU."""
    return tensor.square().sum(dim=0).sqrt_()


def _adaptive_threshold(border_values: torch.Tensor, floor: float, k: float) -> float:
    """``floor`` or ``k`` times the border's typical spread, whichever is larger.

    The spread is the median plus the median absolute deviation, so a few gem pixels
    reaching the border do not inflate it.
    """
    median = border_values.median()
    spread = median + (border_values - median).abs().median()
    return max(floor, k * spread.item())


def _robust_extent(foreground: torch.Tensor) -> tuple[float, float, float, float]:
    ys, xs = torch.nonzero(foreground, as_tuple=True)
    q = torch.tensor(PERCENTILES, dtype=torch.float32) / 100.0
    x_low, x_high = torch.quantile(xs.float(), q).tolist()
    y_low, y_high = torch.quantile(ys.float(), q).tolist()
    return x_low, y_low, x_high + 1.0, y_high + 1.0


def _add_margin(box: tuple[float, ...], width: int, height: int) -> tuple[float, ...]:
    left, top, right, bottom = box
    pad = MARGIN * max(right - left, bottom - top)
    return (
        max(0.0, left - pad),
        max(0.0, top - pad),
        min(float(width), right + pad),
        min(float(height), bottom + pad),
    )


def _towards_square(box: tuple[float, ...], width: int, height: int) -> Box:
    """Grow the shorter side towards the longer one, shifting inside the image if needed."""
    left, top, right, bottom = box
    side = max(right - left, bottom - top)
    left, right = _grow_interval(left, right, side, float(width))
    top, bottom = _grow_interval(top, bottom, side, float(height))
    box = (int(left), int(top), int(np.ceil(right)), int(np.ceil(bottom)))
    return _clip_box(box, width, height)


def _grow_interval(low: float, high: float, length: float, limit: float) -> tuple[float, float]:
    length = min(length, limit)
    centre = (low + high) / 2.0
    low = min(max(0.0, centre - length / 2.0), limit - length)
    return low, low + length


def _clip_box(box: Box, width: int, height: int) -> Box:
    left, top, right, bottom = box
    left, top = max(0, min(left, width - 1)), max(0, min(top, height - 1))
    return (left, top, max(left + 1, min(right, width)), max(top + 1, min(bottom, height)))


def _scale_box(box: Box, small_hw: tuple[int, int], full_hw: tuple[int, int]) -> Box:
    sy, sx = full_hw[0] / small_hw[0], full_hw[1] / small_hw[1]
    left, top, right, bottom = box
    scaled = (int(left * sx), int(top * sy), int(np.ceil(right * sx)), int(np.ceil(bottom * sy)))
    return _clip_box(scaled, full_hw[1], full_hw[0])

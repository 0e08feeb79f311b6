"""Procedural "gem photo" generator used as the embedded default dataset.

The quickstart cannot download anything, so it trains on small JPEG images drawn here and
written as an ordinary image-folder dataset (``<root>/<split>/<Class name>/<class>_<i>.jpg``).
Classes differ by a *combination* of colour, cut outline and facet pattern, so a model has
to combine cues rather than read off a single one.
"""

from __future__ import annotations

import argparse
import colorsys
import json
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

GENERATOR_VERSION = 1
MARKER = ".complete"
SPLITS = ("train", "test")
SUPERSAMPLE = 2


@dataclass(frozen=True)
class GemClass:
    """One synthetic class: a hue in degrees, a cut outline and a facet pattern."""

    name: str
    hue: float
    shape: str
    facets: str

    @property
    def slug(self) -> str:
        """File-name prefix: the class name in lower snake case."""
        return self.name.lower().replace(" ", "_")


SYNTHETIC_CLASSES: tuple[GemClass, ...] = (
    GemClass("Ruby Round", 352, "round", "brilliant"),
    GemClass("Emerald Step", 142, "square", "step"),
    GemClass("Sapphire Oval", 220, "oval", "brilliant"),
    GemClass("Amethyst Hexagon", 282, "hexagon", "step"),
    GemClass("Citrine Square", 48, "square", "brilliant"),
    GemClass("Topaz Trillion", 25, "triangle", "radial"),
    GemClass("Ruby Pear", 352, "pear", "radial"),
    GemClass("Emerald Round", 142, "round", "radial"),
    GemClass("Sapphire Cabochon", 220, "oval", "cabochon"),
    GemClass("Amethyst Marquise", 282, "marquise", "radial"),
    GemClass("Aquamarine Marquise", 188, "marquise", "step"),
    GemClass("Peridot Cabochon", 82, "round", "cabochon"),
)


def _ring(n: int, start: float = 0.0) -> np.ndarray:
    t = start + np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.c_[np.cos(t), np.sin(t)]


def _subdivide(pts: np.ndarray, min_vertices: int = 12) -> np.ndarray:
    while len(pts) < min_vertices:
        mids = (pts + np.roll(pts, -1, axis=0)) / 2
        pts = np.stack([pts, mids], axis=1).reshape(-1, 2)
    return pts


def _outline(shape: str) -> np.ndarray:
    """Unit-size outline of a cut (y points down), centred near the origin."""
    if shape == "round":
        return _ring(16)
    if shape == "oval":
        return _ring(16) * (1.0, 0.7)
    if shape == "square":
        corners = [(1, -0.55), (1, 0.55), (0.75, 0.8), (-0.75, 0.8)]
        return _subdivide(np.r_[corners, np.negative(corners)].astype(float), 16)
    if shape == "hexagon":
        return _subdivide(_ring(6))
    if shape == "triangle":
        return _subdivide(_ring(3, -np.pi / 2))
    if shape == "marquise":
        s = np.linspace(-1, 1, 9)
        half = 0.45 * (1 - s**2)
        return np.r_[np.c_[s, -half], np.c_[s[::-1], half[::-1]][1:-1]]
    if shape == "pear":
        alpha = math.acos(0.62 / 1.3)
        phi = np.linspace(alpha, 2 * np.pi - alpha, 15)
        arc = np.c_[0.62 * np.sin(phi), 0.3 - 0.62 * np.cos(phi)]
        return np.r_[[[0.0, -1.0]], arc] + (0, 0.04)
    raise ValueError(f"unknown gem shape {shape!r}")


def _rgb(h: float, s: float, v: float) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, min(max(s, 0.0), 1.0), min(max(v, 0.0), 1.0))
    return int(r * 255), int(g * 255), int(b * 255)


def _xy(points) -> list[float]:
    return np.asarray(points, float).ravel().tolist()


def _background(rng: np.random.Generator, size: int) -> Image.Image:
    """Solid or linear-gradient backdrop; dark velvet, light paper or any muted colour."""
    kind = rng.choice(["velvet", "paper", "any", "any"])
    ranges = {"velvet": ((0.3, 0.8), (0.05, 0.25)), "paper": ((0.0, 0.12), (0.78, 0.97)), "any": ((0.0, 0.6), (0.2, 0.9))}[kind]
    tones = [np.array(_rgb(rng.random(), rng.uniform(*ranges[0]), rng.uniform(*ranges[1])), float) for _ in range(2)]
    if rng.random() < 0.5:
        tones[1] = tones[0]
    angle = rng.uniform(0, 2 * np.pi)
    y, x = np.mgrid[0:size, 0:size] / size
    t = np.clip((x - 0.5) * math.cos(angle) + (y - 0.5) * math.sin(angle) + 0.5, 0, 1)[..., None]
    return Image.fromarray((tones[0] + (tones[1] - tones[0]) * t).astype(np.uint8))


def _draw_facets(
    draw: ImageDraw.ImageDraw, pts: np.ndarray, centre: np.ndarray, facets: str, hsv: tuple[float, float, float], light: float
) -> None:
    """Shade the gem body: lighter facets face the light angle, alternate ones are darker."""
    h, s, v = hsv

    def shade(k: float) -> tuple[int, int, int]:
        return _rgb(h, s * (1.25 - 0.3 * k), v * k)

    def facing(p: np.ndarray) -> float:
        d = p - centre
        return math.cos(math.atan2(d[1], d[0]) - light)

    n = len(pts)
    if facets == "radial":
        for i in range(n):
            tone = 0.85 + 0.25 * facing((pts[i] + pts[(i + 1) % n]) / 2) + (0.15 if i % 2 else -0.15)
            draw.polygon(_xy([centre, pts[i], pts[(i + 1) % n]]), fill=shade(tone))
        for p in pts:
            draw.line(_xy([centre, p]), fill=shade(1.35), width=1)
    elif facets == "step":
        for j, k in enumerate((1.0, 0.8, 0.6, 0.4)):
            draw.polygon(_xy(centre + (pts - centre) * k), fill=shade(0.6 + 0.2 * j), outline=shade(1.4))
    elif facets == "brilliant":
        rings = [centre + (pts - centre) * k for k in (1.0, 0.75, 0.5)]
        for r, (outer, inner) in enumerate(zip(rings, rings[1:])):
            for i in range(n):
                quad = [outer[i], outer[(i + 1) % n], inner[(i + 1) % n], inner[i]]
                tone = 0.9 + 0.2 * facing(outer[i]) + (0.25 if (i + r) % 2 else -0.25)
                draw.polygon(_xy(quad), fill=shade(tone))
        draw.polygon(_xy(rings[2]), fill=shade(1.15), outline=shade(1.4))
    elif facets == "cabochon":
        toward = np.array([math.cos(light), math.sin(light)])
        radius = np.linalg.norm(pts - centre, axis=1).max()
        for k in np.linspace(1.0, 0.15, 9):
            ring = centre + (pts - centre) * k + toward * radius * 0.35 * (1 - k)
            draw.polygon(_xy(ring), fill=shade(0.55 + 0.6 * (1 - k)))
    else:
        raise ValueError(f"unknown facet pattern {facets!r}")


def render_gem(gem: GemClass, rng: np.random.Generator, image_size: int = 96) -> Image.Image:
    """Draw one RGB photo of `gem` with random backdrop, pose, scale, tint, blur and noise."""
    size = image_size * SUPERSAMPLE
    img = _background(rng, size)
    draw = ImageDraw.Draw(img, "RGBA")
    hsv = ((gem.hue + rng.uniform(-6, 6)) / 360, rng.uniform(0.6, 0.95), rng.uniform(0.55, 0.9))
    radius = size * rng.uniform(0.2, 0.375)
    centre = rng.uniform(radius * 0.9, size - radius * 0.9, size=2)
    angle = rng.uniform(0, 2 * np.pi)
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    pts = (_outline(gem.shape) * (1.0, rng.uniform(0.9, 1.1))) @ rotation.T * radius + centre
    light = rng.uniform(0, 2 * np.pi)
    toward = np.array([math.cos(light), math.sin(light)])
    draw.polygon(_xy(pts - radius * 0.08 * toward), fill=(0, 0, 0, 90))
    _draw_facets(draw, pts, centre, gem.facets, hsv, light)
    draw.line(_xy(np.r_[pts, pts[:1]]), fill=_rgb(hsv[0], hsv[1], hsv[2] * 0.45), width=SUPERSAMPLE)
    rim = pts[np.argmax((pts - centre) @ toward)]
    spot = centre + (rim - centre) * rng.uniform(0.3, 0.55)
    r = radius * rng.uniform(0.06, 0.14)
    draw.ellipse([spot[0] - r, spot[1] - r * 0.7, spot[0] + r, spot[1] + r * 0.7], fill=(255, 255, 255, int(rng.integers(150, 230))))
    img = img.resize((image_size, image_size), Image.Resampling.BOX)
    if rng.random() < 0.3:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 0.9)))
    noisy = np.asarray(img, np.float32) + rng.normal(0, rng.uniform(2, 12), (image_size, image_size, 3))
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def is_generated_dataset(root: Path) -> bool:
    """Whether ``root`` holds a dataset written by :func:`generate_gem_dataset` (any parameters)."""
    return (Path(root) / MARKER).is_file()


def _is_complete(root: Path, params: dict) -> bool:
    try:
        return json.loads((root / MARKER).read_text()) == params
    except (OSError, ValueError):
        return False


def _write_images(folder: Path, num_classes: int, counts: tuple[int, int], image_size: int, seed: int) -> None:
    for split_index, (split, count) in enumerate(zip(SPLITS, counts)):
        for class_index, gem in enumerate(SYNTHETIC_CLASSES[:num_classes]):
            (folder / split / gem.name).mkdir(parents=True)
            for i in range(count):
                rng = np.random.default_rng([seed, split_index, class_index, i])
                path = folder / split / gem.name / f"{gem.slug}_{i:04d}.jpg"
                render_gem(gem, rng, image_size).save(path, quality=int(rng.integers(85, 96)))


def generate_gem_dataset(
    root: Path, *, num_classes: int = 12, train_per_class: int = 40, test_per_class: int = 10, image_size: int = 96, seed: int = 0
) -> Path:
    """Write the synthetic gem image-folder dataset under `root` (if not already there).

    Generation happens in a sibling ``.tmp-<pid>`` folder that is renamed onto `root` only
    after the ``.complete`` marker (the parameters as JSON) is written, so an interrupted run
    never looks finished. A finished dataset with identical parameters is reused as is; one
    with other parameters is replaced. Output bytes depend only on the arguments.
    """
    root = Path(root)
    if not 1 <= num_classes <= len(SYNTHETIC_CLASSES):
        raise ValueError(f"num_classes must be between 1 and {len(SYNTHETIC_CLASSES)}, got {num_classes}")
    params = {
        "version": GENERATOR_VERSION,
        "num_classes": num_classes,
        "train_per_class": train_per_class,
        "test_per_class": test_per_class,
        "image_size": image_size,
        "seed": seed,
    }
    if _is_complete(root, params):
        return root
    if root.exists() and any(root.iterdir()) and not (root / MARKER).exists():
        raise FileExistsError(f"{root} exists and is not a generated gem dataset; refusing to overwrite it")
    tmp = root.with_name(f"{root.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _write_images(tmp, num_classes, (train_per_class, test_per_class), image_size, seed)
        (tmp / MARKER).write_text(json.dumps(params, sort_keys=True))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if (root / MARKER).exists():
        shutil.rmtree(root)
    try:
        os.replace(tmp, root)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not _is_complete(root, params):
            raise
    return root


def main(argv: list[str] | None = None) -> None:
    """Command line: ``python -m gem_lightning.data.tools.synthetic ROOT [options]``."""
    parser = argparse.ArgumentParser(description="Generate the synthetic gem image-folder dataset.")
    parser.add_argument("root", type=Path)
    parser.add_argument("--num-classes", type=int, default=len(SYNTHETIC_CLASSES))
    parser.add_argument("--train-per-class", type=int, default=40)
    parser.add_argument("--test-per-class", type=int, default=10)
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--seed", type=int, default=0)
    args = vars(parser.parse_args(argv))
    try:
        print(generate_gem_dataset(args.pop("root"), **args))
    except (ValueError, FileExistsError) as error:
        parser.error(str(error))


if __name__ == "__main__":
    main()

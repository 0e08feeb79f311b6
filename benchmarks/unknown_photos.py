"""Write photos that show none of the gemstone classes, for the "unknown" benchmark (benchmarks/answers.py).

Real photos ship with Python packages (nothing is downloaded): scikit-image's ``skimage.data`` (an
astronaut, a cat, coffee, coins, a rocket, microscopy, textures, drawings) and matplotlib's
``mpl-data/sample_data`` (Grace Hopper, a present). Each real photo is used whole and as two random
square crops. Generated ones: textures (stripes, checks, smooth noise, wood-like rings), drawings
(lines, circles, polygons on paper), noise, flat colours, and blurred frames (real photos out of focus).

    pip install -e '.[benchmarks]'     # scikit-image
    python benchmarks/unknown_photos.py --out runs/unknown_photos

Writes ``<out>/<kind>/<name>.png``; the kinds are ``photo``, ``drawing`` (the packages' drawings and
generated ones), ``texture``, ``noise``, ``flat``, ``blurred``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib
import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SIZE = 320
PACKAGE_DRAWINGS = {"chessboard_GRAY", "chessboard_RGB", "color", "logo", "phantom", "horse", "text", "page", "logo2"}
"""Package images that are drawings or renders rather than photos of a scene."""


def package_images() -> dict[str, Image.Image]:
    """Every still image shipped with scikit-image and matplotlib, as RGB."""
    import skimage

    folders = [Path(skimage.__file__).parent / "data", Path(matplotlib.get_data_path()) / "sample_data"]
    images = {}
    for folder in folders:
        for path in sorted(folder.glob("*")):
            if path.suffix.lower() in (".png", ".jpg", ".jpeg") and path.stem not in images:
                images[path.stem] = Image.open(path).convert("RGB")
    return images


def crops(image: Image.Image, rng: np.random.Generator, count: int = 2) -> list[Image.Image]:
    """``count`` random square crops of half to all of the shorter side."""
    width, height = image.size
    found = []
    for _ in range(count):
        side = int(min(width, height) * rng.uniform(0.5, 1.0))
        left, top = rng.integers(0, width - side + 1), rng.integers(0, height - side + 1)
        found.append(image.crop((left, top, left + side, top + side)))
    return found


def textures(rng: np.random.Generator, count: int) -> list[Image.Image]:
    grid = np.indices((SIZE, SIZE)).astype(float)
    made = []
    for i in range(count):
        kind = i % 4
        if kind == 0:  # stripes at an angle
            angle, period = rng.uniform(0, np.pi), rng.uniform(6, 40)
            field = np.sin((grid[0] * np.cos(angle) + grid[1] * np.sin(angle)) * 2 * np.pi / period)
        elif kind == 1:  # checks
            period = int(rng.integers(8, 60))
            field = ((grid[0] // period + grid[1] // period) % 2) * 2 - 1.0
        elif kind == 2:  # smooth noise
            coarse = rng.normal(size=(int(rng.integers(4, 16)),) * 2)
            field = np.asarray(Image.fromarray(coarse.astype(np.float32)).resize((SIZE, SIZE), Image.BICUBIC))
            field = field / (np.abs(field).max() + 1e-6)
        else:  # wood-like rings
            centre = rng.uniform(0, SIZE, 2)
            radius = np.hypot(grid[0] - centre[0], grid[1] - centre[1])
            field = np.sin(radius / rng.uniform(3, 12) + rng.normal(size=(SIZE, SIZE)) * 0.3)
        low, high = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
        pixels = low + (high - low) * ((field[..., None] + 1) / 2)
        made.append(Image.fromarray(pixels.clip(0, 255).astype(np.uint8)))
    return made


def drawings(rng: np.random.Generator, count: int) -> list[Image.Image]:
    made = []
    for _ in range(count):
        image = Image.new("RGB", (SIZE, SIZE), tuple(int(v) for v in rng.integers(200, 256, 3)))
        draw = ImageDraw.Draw(image)
        for _ in range(int(rng.integers(3, 12))):
            colour = tuple(int(v) for v in rng.integers(0, 256, 3))
            points = [tuple(int(v) for v in rng.integers(0, SIZE, 2)) for _ in range(int(rng.integers(2, 6)))]
            shape = rng.integers(0, 3)
            if shape == 0:
                draw.line(points, fill=colour, width=int(rng.integers(1, 8)))
            elif shape == 1:
                x, y = points[0]
                r = int(rng.integers(10, 80))
                draw.ellipse((x - r, y - r, x + r, y + r), outline=colour, width=int(rng.integers(1, 6)))
            else:
                draw.polygon(points + [points[0]], fill=colour if len(points) > 2 else None, outline=colour)
        made.append(image)
    return made


def noise(rng: np.random.Generator, count: int) -> list[Image.Image]:
    made = []
    for i in range(count):
        pixels = rng.integers(0, 256, (SIZE, SIZE, 3)) if i % 2 == 0 else rng.normal(128, 40, (SIZE, SIZE, 3))
        made.append(Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)))
    return made


def flat(rng: np.random.Generator, count: int) -> list[Image.Image]:
    return [Image.new("RGB", (SIZE, SIZE), tuple(int(v) for v in rng.integers(0, 256, 3))) for _ in range(count)]


def blurred(photos: list[Image.Image], rng: np.random.Generator) -> list[Image.Image]:
    return [photo.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(6, 16)) * max(photo.size) / 512)) for photo in photos]


def write_all(out: Path, seed: int = 0) -> dict[str, int]:
    """Write every kind under ``out``; returns how many of each."""
    rng = np.random.default_rng(seed)
    kinds: dict[str, list[tuple[str, Image.Image]]] = {kind: [] for kind in ("photo", "drawing", "texture", "noise", "flat", "blurred")}
    photos = []
    for name, image in package_images().items():
        kind = "drawing" if name in PACKAGE_DRAWINGS else "photo"
        kinds[kind].append((name, image))
        if kind == "photo":
            photos.append(image)
            kinds[kind] += [(f"{name} crop {i}", crop) for i, crop in enumerate(crops(image, rng))]
    kinds["drawing"] += [(f"drawing {i}", image) for i, image in enumerate(drawings(rng, 20))]
    kinds["texture"] = [(f"texture {i}", image) for i, image in enumerate(textures(rng, 24))]
    kinds["noise"] = [(f"noise {i}", image) for i, image in enumerate(noise(rng, 10))]
    kinds["flat"] = [(f"flat {i}", image) for i, image in enumerate(flat(rng, 10))]
    kinds["blurred"] = [(f"blurred {i}", image) for i, image in enumerate(blurred(photos, rng))]
    for kind, images in kinds.items():
        (out / kind).mkdir(parents=True, exist_ok=True)
        for name, image in images:
            image.save(out / kind / f"{name}.png")
    return {kind: len(images) for kind, images in kinds.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/unknown_photos"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    counts = write_all(args.out, args.seed)
    print(f"Wrote {sum(counts.values())} photos of nothing to {args.out}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))


if __name__ == "__main__":
    main()

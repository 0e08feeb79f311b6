"""Contact sheet of real gem photos with the box ``gem_bounding_box`` finds drawn on each.

Run from the repository root:

    python benchmarks/autocrop_preview.py [--data-dir ../shared/datasets/gemstones] [--split train]
                                          [--count 24] [--seed 0] [--out runs/autocrop_preview.png]

One photo from each of ``--count`` classes picked at random (seeded). A green box is the crop;
a red frame and "FULL" mark a photo where no distinct gem was found and the whole image is kept.
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from gem_lightning.data.autocrop import gem_bounding_box  # noqa: E402
from gem_lightning.data.images import load_rgb  # noqa: E402
from gem_lightning.data.scan import iter_files, list_classes  # noqa: E402

TILE, CAPTION, COLUMNS = 240, 34, 6
CROP, FALLBACK = (0, 200, 0), (220, 0, 0)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "datasets" / "gemstones")
    parser.add_argument("--split", default="train")
    parser.add_argument("--count", type=int, default=24)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "autocrop_preview.png")
    return parser.parse_args(argv)


def pick_photos(split_dir: Path, count: int, seed: int) -> list[tuple[str, Path]]:
    """One random photo from each of ``count`` random classes (all classes if fewer)."""
    rng = random.Random(seed)
    classes = list_classes(split_dir)
    chosen = sorted(rng.sample(classes, min(count, len(classes))))
    return [(name, rng.choice(iter_files(split_dir / name))) for name in chosen]


def render_tile(name: str, path: Path, font) -> tuple[Image.Image, bool, float]:
    """The photo scaled into a tile with its box drawn; whether it fell back; the box's area share."""
    image = load_rgb(path)
    box = gem_bounding_box(np.asarray(image))
    fallback = box == (0, 0, image.width, image.height)
    scale = TILE / max(image.size)
    thumb = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.Resampling.LANCZOS)
    tile = Image.new("RGB", (TILE, TILE + CAPTION), "white")
    offset = ((TILE - thumb.width) // 2, (TILE - thumb.height) // 2)
    tile.paste(thumb, offset)
    draw = ImageDraw.Draw(tile)
    left, top, right, bottom = (round(v * scale) for v in box)
    rect = (offset[0] + left, offset[1] + top, offset[0] + right - 1, offset[1] + bottom - 1)
    draw.rectangle(rect, outline=FALLBACK if fallback else CROP, width=3)
    area = (box[2] - box[0]) * (box[3] - box[1]) / (image.width * image.height)
    label = "FULL (no gem found)" if fallback else f"box {100 * area:.0f}% of area"
    draw.text((4, TILE + 2), name, fill="black", font=font)
    draw.text((4, TILE + 17), f"{path.name}  {label}", fill=FALLBACK if fallback else (60, 60, 60), font=font)
    return tile, fallback, area


def contact_sheet(tiles: list[Image.Image], title: str, font) -> Image.Image:
    rows = math.ceil(len(tiles) / COLUMNS)
    sheet = Image.new("RGB", (COLUMNS * TILE + (COLUMNS + 1) * 6, 30 + rows * (TILE + CAPTION + 6)), (235, 235, 235))
    ImageDraw.Draw(sheet).text((8, 6), title, fill="black", font=font)
    for index, tile in enumerate(tiles):
        row, column = divmod(index, COLUMNS)
        sheet.paste(tile, (6 + column * (TILE + 6), 30 + row * (TILE + CAPTION + 6)))
    return sheet


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(1)  # small tensors: extra intra-op threads only add overhead (see autocrop's docstring)
    font = ImageFont.load_default(size=13)
    photos = pick_photos(args.data_dir / args.split, args.count, args.seed)
    tiles, fallbacks, seconds = [], [], 0.0
    for name, path in photos:
        start = time.perf_counter()
        tile, fallback, area = render_tile(name, path, font)
        seconds += time.perf_counter() - start
        tiles.append(tile)
        fallbacks.append(fallback)
        print(f"{'FULL' if fallback else 'crop'}  {100 * area:5.1f}%  {name}/{path.name}")
    title = (
        f"gem_bounding_box on {len(tiles)} {args.split} photos of {args.data_dir.name} (seed {args.seed}): "
        f"{sum(fallbacks)} fell back to the full image; green = crop box, red = full image kept"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    contact_sheet(tiles, title, font).save(args.out)
    print(
        f"{sum(fallbacks)} of {len(tiles)} fell back to the full image; "
        f"{1000 * seconds / max(1, len(tiles)):.0f} ms per photo (load + box + drawing); wrote {args.out}"
    )


if __name__ == "__main__":
    main()

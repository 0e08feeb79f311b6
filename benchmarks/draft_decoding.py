"""JPEG draft decoding (DCT scaling) against a full decode: same predictions? how much faster?

Run from the repository root (prints figures; not a test):

    python benchmarks/draft_decoding.py --ckpt CKPT [--data-dir ../shared/datasets/gemstones]
        [--margins 0 1 2] [--upscale 4]

Every photo of ``<data-dir>/test`` is decoded as ``predict`` decodes it (squeezed to the cache size
``ceil(1.15 S)``, then the evaluation resize to ``S``), once per ``--margins`` value: 0 decodes every
pixel; ``m`` lets PIL's ``Image.draft`` shrink a JPEG by 1/2, 1/4 or 1/8 in the DCT while it stays at
least ``m`` times the cache size on both sides (``gem_lightning.data.images.decode_resized`` uses
``DRAFT_MARGIN``; with auto-crop it asks for twice that). For each margin: ms per photo (one thread),
how many photos were drafted, the top-1 agreement with the full decode through the checkpoint's
network (one view, no TTA: TTA would hide the differences), the largest probability difference and
the top-1 accuracy (the folder names are the classes).
``--upscale F`` repeats it on the same photos enlarged F times, at most 4032 px (Lanczos, JPEG
quality 92, in a temporary folder): the phone-camera sizes a server sees, where drafting matters; most of ``test/``
is 400-500 px, where it rarely applies.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from gem_lightning.data.datasets import find_predict_files  # noqa: E402
from gem_lightning.data.images import _decode, _Source  # noqa: E402
from gem_lightning.data.transforms import cache_size_for, eval_transform  # noqa: E402
from gem_lightning.inference.api import load_model  # noqa: E402


def decode(path: Path, size: int, margin: float, autocrop: bool) -> tuple[np.ndarray, bool]:
    """``decode_resized`` with the draft margin ``margin`` (0: no draft); and whether the draft shrank it."""
    draft = None if margin == 0 else int(round(size * margin * (2 if autocrop else 1)))
    with Image.open(path) as probe:
        full_size = probe.size
    image = _decode(_Source.of(path, str(path)), (255, 255, 255), draft_size=draft)
    drafted = draft is not None and max(image.size) < max(full_size)
    if autocrop:
        from gem_lightning.data.autocrop import autocrop as crop_to_gem

        image = crop_to_gem(image)
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BILINEAR)
    return np.array(image, dtype=np.uint8), drafted


def run(files: list[Path], model, margins: list[float], label: str, labels: torch.Tensor | None = None) -> None:
    size = cache_size_for(model.image_size)
    autocrop = model.settings.autocrop
    resize = eval_transform(model.image_size)
    torch.set_num_threads(1)
    results = {}
    for margin in margins:
        start = time.perf_counter()
        decoded = [decode(path, size, margin, autocrop) for path in files]
        ms = 1000 * (time.perf_counter() - start) / len(files)
        images = torch.stack([resize(torch.from_numpy(array).permute(2, 0, 1)) for array, _ in decoded])
        with torch.inference_mode():
            probs = torch.cat([model.classifier.model.network(model.classifier.model.normalize(images[i : i + 64])).float().softmax(-1)
                               for i in range(0, len(images), 64)])  # fmt: skip
        results[margin] = (ms, sum(drafted for _, drafted in decoded), probs)
    reference = results[0][2] if 0 in results else None
    print(f"\n{label}: {len(files)} photos, median {statistics.median(max(Image.open(f).size) for f in files)} px on the long side; "
          f"cache size {size} px, network {model.image_size} px{', auto-crop' if autocrop else ''}")  # fmt: skip
    print(f"{'margin':>7} {'ms/photo':>9} {'drafted':>8} {'top-1 = full decode':>20} {'max |dp|':>9} {'top-1 accuracy':>15}")
    for margin, (ms, drafted, probs) in results.items():
        agree = "" if reference is None else f"{100 * (probs.argmax(-1) == reference.argmax(-1)).float().mean():.2f} %"
        diff = "" if reference is None else f"{(probs - reference).abs().max():.4f}"
        accuracy = "" if labels is None else f"{100 * (probs.argmax(-1) == labels).float().mean():.2f} %"
        print(f"{margin:>7g} {ms:>9.2f} {drafted:>8} {agree:>20} {diff:>9} {accuracy:>15}", flush=True)


def upscaled(files: list[Path], factor: int, folder: Path, longest: int = 4032) -> list[Path]:
    """The photos enlarged ``factor`` times, at most ``longest`` px on the long side (a 12 MP phone photo)."""
    out = []
    for i, path in enumerate(files):
        with Image.open(path) as image:
            scale = min(factor, longest / max(image.size))
            big = image.convert("RGB").resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.LANCZOS)
        target = folder / f"{i:04d}.jpg"
        big.save(target, quality=92)
        out.append(target)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", type=Path, required=True)
    parser.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "datasets" / "gemstones")
    parser.add_argument("--margins", type=float, nargs="+", default=[0, 1, 2])
    parser.add_argument("--upscale", type=int, default=0, help="also on the photos enlarged this many times (0: not)")
    args = parser.parse_args()
    files = find_predict_files(str(args.data_dir / "test"))
    model = load_model(args.ckpt)
    names = list(model.class_names)
    labels = torch.tensor([names.index(f.parent.name) for f in files]) if all(f.parent.name in names for f in files) else None
    run(files, model, args.margins, f"{args.data_dir / 'test'} as it is", labels)
    if args.upscale:
        with tempfile.TemporaryDirectory() as tmp:
            run(
                upscaled(files, args.upscale, Path(tmp)),
                model,
                args.margins,
                f"the same photos enlarged {args.upscale}x (4032 px at most)",
                labels,
            )


if __name__ == "__main__":
    main()

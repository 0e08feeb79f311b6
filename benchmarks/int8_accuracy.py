"""int8 against fp32 (ONNX Runtime) on the real test photos, calibrated on training photos.

Run from the repository root (prints figures; not a test):

    python benchmarks/int8_accuracy.py --ckpt CKPT [--data-dir ../shared/datasets/gemstones] [--per-class 2]

The checkpoint's fp32 ONNX model (``load_model(ckpt, runtime="onnxruntime")``: exported, checked,
cached) is quantized exactly as ``runtime: onnxruntime-int8`` does
(:func:`gem_lightning.inference.int8.quantize_int8`), calibrated on ``--per-class`` photos a class of
``<data-dir>/train`` (the first ones by name), into a temporary folder (the checkpoint's int8 cache is
left alone: this measures, it does not decide). Then on every photo of ``<data-dir>/test``: top-1
accuracy of fp32 and int8 with one view and with the checkpoint's TTA, their top-1 agreement, and
forward ms per photo of each (batches of 32, one view, this process's threads).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from gem_lightning.data.datasets import find_predict_files  # noqa: E402
from gem_lightning.inference.api import load_model  # noqa: E402
from gem_lightning.inference.int8 import quantize_int8  # noqa: E402
from gem_lightning.inference.onnx_model import OnnxProbabilities  # noqa: E402


def calibration_files(train: Path, per_class: int) -> list[Path]:
    """The first ``per_class`` photos (by name) of each class folder."""
    return [
        path for folder in sorted(p for p in train.iterdir() if p.is_dir()) for path in sorted(find_predict_files(str(folder)))[:per_class]
    ]


def predictions(probabilities: OnnxProbabilities, images: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Top-1 classes of ``images`` in batches of 32, and ms per photo."""
    start = time.perf_counter()
    top1 = torch.cat([probabilities(images[i : i + 32]).argmax(-1) for i in range(0, len(images), 32)])
    return top1, 1000 * (time.perf_counter() - start) / len(images)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", type=Path, required=True)
    parser.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "datasets" / "gemstones")
    parser.add_argument("--per-class", type=int, default=2, help="training photos a class that calibrate")
    args = parser.parse_args()
    model = load_model(args.ckpt, runtime="onnxruntime")
    fp32 = model._probabilities.path
    calibration = calibration_files(args.data_dir / "train", args.per_class)
    test = find_predict_files(str(args.data_dir / "test"))
    labels = torch.tensor([model.class_names.index(path.parent.name) for path in test])
    images = torch.stack([model.preprocess(path) for path in test])
    tta = model.classifier.model.tta
    print(f"{args.ckpt}: fp32 ONNX {fp32}; calibration {len(calibration)} training photos; {len(test)} test photos; checkpoint TTA {tta}")
    with tempfile.TemporaryDirectory() as tmp:
        int8 = Path(tmp) / "int8.onnx"
        start = time.perf_counter()
        quantize_int8(fp32, int8, torch.stack([model.preprocess(path) for path in calibration]))
        print(f"quantized in {time.perf_counter() - start:.1f} s")
        rows = {}
        for name, path in (("fp32", fp32), ("int8", int8)):
            one_view, ms = predictions(OnnxProbabilities(path), images)
            with_tta, _ = predictions(OnnxProbabilities(path, tta=tta), images)
            rows[name] = (one_view, with_tta, ms)
    print(f"\n{'':>5} {'top-1, one view':>16} {f'top-1, TTA {tta}':>20} {'ms/photo':>9}")
    for name, (one_view, with_tta, ms) in rows.items():
        print(
            f"{name:>5} {100 * (one_view == labels).float().mean():>15.2f}% {100 * (with_tta == labels).float().mean():>19.2f}% {ms:>9.2f}"
        )
    agree = [(rows["fp32"][i] == rows["int8"][i]).float().mean() for i in (0, 1)]
    print(f"top-1 agreement int8 = fp32: {100 * agree[0]:.2f} % one view, {100 * agree[1]:.2f} % with TTA")


if __name__ == "__main__":
    main()

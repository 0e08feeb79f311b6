"""A stream written by ``main.py optimize`` (LitData chunks at a path or ``s3://``): nothing scanned or decoded up front.

Its class names, train/validation split and decode settings come with it (``gem_dataset.json``).
"""

from __future__ import annotations

from pathlib import Path

from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch.utils.data import DataLoader, Dataset

from gem_lightning.data.datasets import collate_channels_last
from gem_lightning.data.loader import Loader, SignalSafeStreamingDataLoader
from gem_lightning.data.provenance import PhotoRecord
from gem_lightning.data.sources.base import DataSource, Stage, Transforms
from gem_lightning.data.streaming import AugmentingCollate, EvaluationStream, TrainingStream, read_info, stream_decode_settings


class StreamSource(DataSource):
    """The splits of the stream at ``root``.

    Args:
        root: the stream (a folder holding ``gem_dataset.json``, or ``s3://bucket/prefix``).
        image_size: the side the model sees (a ``resized`` stream must hold images for it).
        val_fraction, seed: the data module's split settings; the stream's own split is used, with a
            warning where they differ.
        cache_dir: where downloaded chunks are kept.
        batch_size: images per training batch.
        loader: how training batches are loaded.
    """

    def __init__(
        self, root: str, image_size: int, *, val_fraction: float, seed: int, cache_dir: Path | None, batch_size: int, loader: Loader
    ) -> None:
        self.root = root
        self.info = read_info(root)
        self.class_names = list(self.info.class_names)
        self.task = self.info.task
        self.decode = stream_decode_settings(root, self.info, image_size)
        self.val_fraction, self.seed = val_fraction, seed
        self.cache_dir = cache_dir
        self.batch_size = batch_size
        self.loader = loader

    def datasets(self, stage: Stage, transforms: Transforms) -> dict[str, Dataset]:
        if stage == "test":
            return {"test": EvaluationStream(self.root, "test", self.info, transforms.eval, cache_dir=self.cache_dir)}
        info = self.info
        if (info.val_fraction, info.seed) != (self.val_fraction, self.seed):
            rank_zero_warn(
                f"The stream {self.root!r} was split with val_fraction {info.val_fraction} and seed {info.seed} when it "
                f"was optimized; that split is used (data.val_fraction {self.val_fraction}, data.seed {self.seed} are not)."
            )
        has_val = info.counts.get("val", 0) > 0
        rank_zero_info(
            f"Streaming {self.root!r}: {', '.join(f'{k} {v}' for k, v in info.counts.items())} images, "
            f"{len(info.class_names)} classes ({info.image_format}, {info.decode.size} px)."
        )
        return {
            "train": TrainingStream(self.root, info, self.seed, self.cache_dir),
            "val": EvaluationStream(self.root, "val", info, transforms.eval, cache_dir=self.cache_dir) if has_val else [],
        }

    def evaluation_datasets(self, transform) -> dict[str, Dataset]:
        return {
            split: EvaluationStream(self.root, split, self.info, transform, cache_dir=self.cache_dir) if self.info.counts.get(split) else []
            for split in ("train", "val")
        }

    def photos(self, split: str) -> PhotoRecord | None:
        """The stream's split by name: a stream keeps no digests of its photos."""
        return PhotoRecord.of_stream(self.root, split)

    def train_loader(self, dataset: Dataset, indexed_loader, transforms: Transforms) -> DataLoader:
        """LitData's loader: the stream shuffles and shards itself, and its position goes into checkpoints;
        each batch is augmented in the loader workers."""
        options = self.loader.options()
        del options["persistent_workers"]
        return SignalSafeStreamingDataLoader(
            dataset, batch_size=self.batch_size, collate_fn=AugmentingCollate(transforms.train, collate_channels_last), **options
        )

"""The LightningDataModule: a data source (``gem_lightning.data.sources``) in, uint8 image batches out.

``data.data_dir`` picks the source: a folder per class (scanned, decoded once into the cache, split
reproducibly) or a stream written by ``main.py optimize`` (nothing scanned up front). The data module
adds what every source shares: the transforms, the loaders and their samplers, augmentation on the
device and progressive resizing.
"""

from __future__ import annotations

from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Literal

import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader, Dataset

from gem_lightning.compat.lightning import fit_epoch_about_to_run
from gem_lightning.data.augmentation import Augmentation
from gem_lightning.data.batch_augment import BatchAugment
from gem_lightning.data.cache import Cache, DecodeSettings
from gem_lightning.data.datasets import collate_channels_last, collate_predictions
from gem_lightning.data.labels_file import is_labels_file
from gem_lightning.data.loader import Loader, SignalSafeDataLoader, start_worker_server
from gem_lightning.data.progressive_resizing import ProgressiveResizing, resize_batch
from gem_lightning.data.provenance import PhotoRecord
from gem_lightning.data.samplers import FitEpochDistributedSampler
from gem_lightning.data.scan import DatasetLayoutError, Rejected
from gem_lightning.data.sources import DataSource, FolderSource, LabelsFileSource, StreamSource, Task, Transforms
from gem_lightning.data.sources.predict import predict_dataset
from gem_lightning.data.streaming import is_stream
from gem_lightning.data.transforms import cache_size_for, eval_transform, train_transform
from gem_lightning.errors import UserInputError
from gem_lightning.models.spec import DEFAULT_IMAGE_SIZE


def check_settings(
    *, image_size: int, val_fraction: float, batch_size: int, loader: Loader, cache: Cache, augment: Augmentation, augment_on: str
) -> None:
    """Refuse values that cannot work, naming the setting, before any folder is read."""
    problems = []
    if image_size < 32:
        problems.append(f"data.image_size must be at least 32 px, got {image_size}")
    if not 0.0 <= val_fraction < 1.0:
        problems.append(f"data.val_fraction must be at least 0 and below 1 (the share of train/ held out), got {val_fraction}")
    if batch_size < 1:
        problems.append(f"data.batch_size must be at least 1, got {batch_size}")
    if augment_on not in ("loader", "device"):
        problems.append(f"data.augment_on must be 'loader' or 'device', got {augment_on!r}")
    problems += loader.problems() + cache.problems() + augment.problems()
    if problems:
        raise UserInputError("; ".join(problems) + ".")


class GemDataModule(LightningDataModule):
    """Image folders (or streams) in, uint8 image batches out.

    Args:
        data_dir: folder holding ``train/<Class>/...`` and optionally ``test/<Class>/...``; or a
            labels file (``<file>.csv``: ``path,labels[,split]``, several ``;``-separated labels a
            photo: multi-label training); or a stream written by ``main.py optimize`` (a folder with
            ``gem_dataset.json``, or ``s3://bucket/prefix``): its split and decode settings are used,
            nothing is scanned.
        generate: ``synthetic`` writes the embedded procedural gem dataset into ``data_dir`` on
            first use (for the quickstart; nothing is downloaded), if ``data_dir`` is absent or
            empty; a ``data_dir`` that already holds ``train/`` is trained on as it is.
        image_size: side, in pixels, of the square images the model sees; default: the input size
            the network expects (``main.py`` asks ``model.network``; 220 px, the seed's, for the VGG).
        val_fraction: share of each class of ``train/`` held out for validation.
        seed: seed of the train/validation split (independent of the training seed).
        batch_size: images per batch, per process.
        loader: how batches are loaded: worker processes, pinned memory, their start method.
        cache: where decoded images are kept: in memory, on disk, which folder.
        augment: the training augmentation.
        augment_on: where it runs: ``loader``: in the DataLoader workers (OpenCV); ``device``:
            the loader yields the cached images as they are and the whole batch is augmented on
            the accelerator after the transfer (``BatchAugment``; cheap for CPU workers).
        progressive_resizing: train on smaller batches first, growing to ``image_size`` (see
            :class:`~gem_lightning.data.progressive_resizing.ProgressiveResizing`); ``null``: always ``image_size``.
        bad_files: ``skip`` unusable files and report them, or ``strict``: stop before training.
        autocrop: crop each photo to the gem's bounding box before resizing (the seed's step).
        background: colour that transparent areas of images become.
        predict_path: an image file, a folder (searched recursively) or a glob, for ``predict``; or a
            stream (its ``test`` split) or one of its splits (``<stream>/val``).
        corrections: a CSV (``python main.py audit`` writes one to edit) whose rows drop photos of
            ``train/`` or ``test/``, or move them to another class, when the folder is scanned; the
            photo folder is never changed, and the scan summary says how many were dropped and relabelled.
    """

    def __init__(
        self,
        data_dir: str | None = None,
        *,
        generate: Literal["synthetic"] | None = None,
        image_size: int | None = None,
        val_fraction: float = 0.2,
        seed: int = 42,
        batch_size: int = 32,
        loader: Loader = Loader(),
        cache: Cache = Cache(),
        augment: Augmentation = Augmentation(),
        augment_on: Literal["loader", "device"] = "loader",
        progressive_resizing: ProgressiveResizing | None = None,
        bad_files: Literal["skip", "strict"] = "skip",
        autocrop: bool = False,
        background: tuple[int, int, int] = (255, 255, 255),
        predict_path: str | None = None,
        corrections: str | None = None,
    ) -> None:
        super().__init__()
        image_size = image_size or DEFAULT_IMAGE_SIZE
        check_settings(
            image_size=image_size,
            val_fraction=val_fraction,
            batch_size=batch_size,
            loader=loader,
            cache=cache,
            augment=augment,
            augment_on=augment_on,
        )
        if progressive_resizing is not None:
            progressive_resizing.check()
        self.save_hyperparameters(ignore=["augment", "progressive_resizing", "loader", "cache"])
        # Plain types keep checkpoints loadable with weights_only.
        for name, settings in (("augment", augment), ("progressive_resizing", progressive_resizing), ("loader", loader), ("cache", cache)):
            self.hparams[name] = asdict(settings) if settings is not None else None
        self.image_size = image_size
        self.batch_size = batch_size
        self.loader = loader
        self.cache = cache
        self.augment = augment
        self.augment_on = augment_on
        self.batch_augment = BatchAugment(augment, image_size) if augment_on == "device" else None
        self.progressive_resizing = progressive_resizing
        self.predict_path = predict_path
        decode = DecodeSettings(cache_size_for(image_size), autocrop, tuple(background))
        self.source = self._open_source(data_dir, generate, corrections, decode)
        self.settings = self.source.decode if self.source else decode
        self.class_names = self.source.class_names if self.source else None
        self.datasets: dict[str, Dataset] = {}
        self.trained_before: PhotoRecord | None = None  # what the checkpoint a fit resumes from trained on

    def _open_source(
        self, data_dir: str | None, generate: str | None, corrections: str | None, decode: DecodeSettings
    ) -> DataSource | None:
        hparams = self.hparams
        if not data_dir:
            if generate:
                raise DatasetLayoutError("data.generate needs data.data_dir: the folder to write the embedded dataset into.")
            return None
        if is_labels_file(data_dir):
            if corrections or generate:
                raise UserInputError(
                    f"data.{'corrections' if corrections else 'generate'} applies to a folder of class folders, not a labels "
                    "file: edit the labels file itself."
                )
            return LabelsFileSource(
                Path(data_dir).expanduser(),
                decode,
                val_fraction=hparams.val_fraction,
                seed=hparams.seed,
                cache=self.cache,
                bad_files=hparams.bad_files,
                num_workers=self.loader.workers,
                multiprocessing_context=self.loader.multiprocessing_context,
            )
        if is_stream(data_dir):
            if corrections:
                raise UserInputError(
                    "data.corrections applies to a photo folder, not a stream: give it to the folder's `fit`, "
                    "or drop the photos before `optimize`."
                )
            return StreamSource(
                str(data_dir),
                self.image_size,
                val_fraction=hparams.val_fraction,
                seed=hparams.seed,
                cache_dir=self.cache.directory,
                batch_size=self.batch_size,
                loader=self.loader,
            )
        return FolderSource(
            Path(data_dir).expanduser(),
            decode,
            val_fraction=hparams.val_fraction,
            seed=hparams.seed,
            generate=generate == "synthetic",
            cache=self.cache,
            bad_files=hparams.bad_files,
            num_workers=self.loader.workers,
            multiprocessing_context=self.loader.multiprocessing_context,
            corrections=corrections,
        )

    @property
    def task(self) -> Task | None:
        """``multiclass`` or ``multilabel``, as the source's targets are; None without data (a checkpoint decides)."""
        return self.source.task if self.source else None

    @property
    def preprocessing(self) -> dict:
        """How photos are decoded before resizing; a model must be served with the same."""
        return {"autocrop": self.settings.autocrop, "background": list(self.settings.background)}

    @property
    def rejected(self) -> dict[str, list[Rejected]]:
        """Files of each split left out, with why (a stream left them out when it was made)."""
        return self.source.rejected if self.source else {}

    def class_counts(self) -> list[int]:
        """Images of each class in the training split (after the split), in label order: what
        class-balanced loss weights are computed from."""
        return self._require_source("fit").class_counts()

    def paths(self, stage: str) -> list[Path] | None:
        """Files behind the dataset of ``stage`` by dataset index; None where the photos are not files here (a stream)."""
        return self._require_source(stage).paths(stage)

    def _require_source(self, stage: str) -> DataSource:
        if self.source is None:
            raise DatasetLayoutError(f"`{stage}` needs a dataset: set --data.data_dir to a folder with train/<Class>/ images.")
        return self.source

    def _transforms(self) -> Transforms:
        # On the device, training batches leave the loader un-augmented, at the cache size.
        train = torch.nn.Identity() if self.batch_augment is not None else train_transform(self.image_size, self.augment)
        return Transforms(train=train, eval=eval_transform(self.image_size))

    # Lightning hooks -------------------------------------------------------------------------

    def state_dict(self) -> dict:
        """What checkpoints keep of the data: which photos the model trained on (``trained_on``, a
        :class:`~gem_lightning.data.provenance.PhotoRecord`, with those of the checkpoint a fit resumed
        from), so that ``calibrate`` refuses them. Nothing where that is unknown: a source that cannot
        say, or a resumed checkpoint without a record."""
        current = self.source.photos("train") if self.source is not None else None
        resumed = self.trainer is not None and self.trainer.ckpt_path is not None
        if current is None or (resumed and self.trained_before is None):
            return {}
        return {"trained_on": (current | (self.trained_before or PhotoRecord())).state()}

    def load_state_dict(self, state_dict: dict) -> None:
        """A checkpoint's record, restored by Lightning with ``--ckpt_path`` (not called for a checkpoint without one)."""
        self.trained_before = PhotoRecord.from_state(state_dict["trained_on"]) if "trained_on" in state_dict else None

    def prepare_data(self) -> None:
        """Once per machine: whatever the source shares between processes (the embedded dataset, the disk cache)."""
        self._start_worker_server()
        if self.source is not None:
            self.source.prepare()

    def setup(self, stage: str) -> None:
        self._start_worker_server()
        if stage in ("fit", "validate") and "train" not in self.datasets:
            self.datasets.update(self._require_source("fit").datasets("fit", self._transforms()))
        elif stage == "test" and "test" not in self.datasets:
            self.datasets.update(self._require_source("test").datasets("test", self._transforms()))
        elif stage == "predict":
            if not self.predict_path:
                raise UserInputError("`predict` needs --data.predict_path: an image, a folder of images or a glob.")
            self.datasets["predict"] = predict_dataset(
                self.predict_path, self.settings, eval_transform(self.image_size), self.cache.directory
            )

    def _start_worker_server(self) -> None:
        if self.loader.workers > 0:
            start_worker_server(self.loader.multiprocessing_context)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        """Training batches, on the accelerator: augmented there with ``augment_on: device``, and
        resized to the step's side with ``progressive_resizing``.

        Only ``(images, targets, indices)`` batches: the model summary sends the model's example
        input (a bare tensor, already at ``image_size``) through this hook too.
        """
        if self.trainer is None or not self.trainer.training or not isinstance(batch, (tuple, list)):
            return batch
        images, *rest = batch
        if self.batch_augment is not None:
            images = self.batch_augment(images)
        if self.progressive_resizing is not None:
            images = resize_batch(images, self.training_size())
        return (images, *rest)

    def training_size(self) -> int:
        """The side of the current training step's batches (``image_size`` without progressive resizing)."""
        if self.progressive_resizing is None or self.trainer is None:
            return self.image_size
        progress = self.trainer.global_step / max(1, self.trainer.estimated_stepping_batches)
        return self.progressive_resizing.size_at(progress, self.image_size)

    # Dataloaders -----------------------------------------------------------------------------

    def train_dataloader(self) -> DataLoader:
        return self.source.train_loader(self.datasets["train"], lambda dataset: self._loader(dataset, train=True), self._transforms())

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.datasets["val"])

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.datasets["test"])

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.datasets["predict"], collate_fn=collate_predictions)

    def _loader(self, dataset: Dataset, *, train: bool = False, collate_fn=collate_channels_last) -> DataLoader:
        return SignalSafeDataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=self._sampler(dataset, train),
            shuffle=None if self._distributed else train,
            drop_last=False,
            collate_fn=collate_fn,
            **self.loader.options(),
        )

    @property
    def _distributed(self) -> bool:
        return self.trainer is not None and self.trainer.world_size > 1

    def _sampler(self, dataset: Dataset, train: bool):
        """Under DDP: a shuffling sampler for training; an unpadded one for evaluation (exact metrics)."""
        if not self._distributed:
            return None
        rank, world = self.trainer.global_rank, self.trainer.world_size
        if train:
            return FitEpochDistributedSampler(
                dataset,
                epoch=partial(fit_epoch_about_to_run, self.trainer),
                num_replicas=world,
                rank=rank,
                shuffle=True,
                seed=self.hparams.seed,
            )
        return UnrepeatedDistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=False)

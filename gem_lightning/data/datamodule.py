"""The LightningDataModule for folder-per-class image sets (``train/<Class>/*``, ``test/<Class>/*``)
and for streams optimized from them (``gem_lightning.data.streaming``).

From a folder, ``prepare_data`` generates the embedded dataset when asked and decodes every image
once into the disk cache; ``setup`` scans the folder, reports what it will not use, splits
``train/`` into train and validation reproducibly, and builds datasets over the decoded images
(``gem_lightning.data.folders``). From a stream nothing is scanned or decoded up front: the split
and the decode settings come with it, and training streams chunks as it goes.
"""

from __future__ import annotations

import multiprocessing
import os
from dataclasses import asdict
from pathlib import Path
from typing import Literal

import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch.utils.data import DataLoader, Dataset

from gem_lightning.data.augmentation import Augmentation
from gem_lightning.data.batch_augment import BatchAugment
from gem_lightning.data.cache import DecodeSettings, default_cache_dir
from gem_lightning.data.datasets import CachedImageDataset, PredictDataset, collate_channels_last, collate_predictions, find_predict_files
from gem_lightning.data.folders import FolderData
from gem_lightning.data.loader import DEFAULT_START_METHOD, SignalSafeDataLoader, SignalSafeStreamingDataLoader, start_worker_server
from gem_lightning.data.progressive_resizing import ProgressiveResizing, resize_batch
from gem_lightning.data.samplers import FitEpochDistributedSampler
from gem_lightning.data.scan import EXPECTED_LAYOUT, DatasetLayoutError, ImageRecord, Rejected, check_dataset_dir
from gem_lightning.data.split import stratified_split
from gem_lightning.data.streaming import (
    SPLITS,
    AugmentingCollate,
    EvaluationStream,
    TrainingStream,
    is_stream,
    read_info,
    stream_decode_settings,
)
from gem_lightning.data.tools.synthetic import SYNTHETIC_CLASSES, generate_gem_dataset, is_generated_dataset
from gem_lightning.data.transforms import cache_size_for, eval_transform, train_transform
from gem_lightning.errors import UserInputError

DEFAULT_IMAGE_SIZE = 220
"""The seed notebook's input size."""


def check_settings(
    *, image_size: int, val_fraction: float, batch_size: int, num_workers: int | None, cache_memory_gb: float, multiprocessing_context: str
) -> None:
    """Refuse values that cannot work, naming the setting, before any folder is read."""
    problems = []
    if image_size < 32:
        problems.append(f"data.image_size must be at least 32 px, got {image_size}")
    if not 0.0 <= val_fraction < 1.0:
        problems.append(f"data.val_fraction must be at least 0 and below 1 (the share of train/ held out), got {val_fraction}")
    if batch_size < 1:
        problems.append(f"data.batch_size must be at least 1, got {batch_size}")
    if num_workers is not None and num_workers < 0:
        problems.append(f"data.num_workers must be 0 (load in the main process) or more, got {num_workers}")
    if cache_memory_gb < 0:
        problems.append(f"data.cache_memory_gb must be 0 or more, got {cache_memory_gb}")
    if multiprocessing_context not in multiprocessing.get_all_start_methods():
        problems.append(
            f"data.multiprocessing_context must be one of this platform's start methods "
            f"({', '.join(multiprocessing.get_all_start_methods())}), got {multiprocessing_context!r}"
        )
    if problems:
        raise UserInputError("; ".join(problems) + ".")


def default_num_workers() -> int:
    """One loader worker per spare core (at least one, at most eight)."""
    return min(8, max(1, (os.cpu_count() or 2) - 1))


class GemDataModule(LightningDataModule):
    """Image folders in, uint8 image batches out.

    Args:
        data_dir: folder holding ``train/<Class>/...`` and optionally ``test/<Class>/...``; or a
            stream written by ``main.py optimize`` (a folder with ``gem_dataset.json``, or
            ``s3://bucket/prefix``): its split and decode settings are used, nothing is scanned.
        generate: ``synthetic`` writes the embedded procedural gem dataset into ``data_dir`` on
            first use (for the quickstart; nothing is downloaded), if ``data_dir`` is absent or
            empty; a ``data_dir`` that already holds ``train/`` is trained on as it is.
        image_size: side, in pixels, of the square images the model sees; default: the input size
            the network's pretrained weights expect (``main.py`` asks ``model.network``), else
            220 px, the seed's.
        val_fraction: share of each class of ``train/`` held out for validation.
        seed: seed of the train/validation split (independent of the training seed).
        batch_size: images per batch, per process.
        num_workers: DataLoader worker processes; default: one per spare core.
        pin_memory: pin host memory for faster copies to a GPU; default: when CUDA is available.
        persistent_workers: keep workers alive between epochs.
        multiprocessing_context: how loader and decoding workers start: ``forkserver`` (the default
            where the platform has one) forks them from a single-threaded server process, never
            from the training process, whose threads can deadlock a forked child; ``fork`` forks
            the training process; ``spawn`` (Windows' only method) starts fresh interpreters.
        augment: the training augmentation.
        augment_on: where it runs: ``loader``: in the DataLoader workers (OpenCV); ``device``:
            the loader yields the cached images as they are and the whole batch is augmented on
            the accelerator after the transfer (``BatchAugment``; cheap for CPU workers).
        progressive_resizing: train on smaller batches first, growing to ``image_size`` (see
            :class:`~gem_lightning.data.progressive_resizing.ProgressiveResizing`); ``null``: always ``image_size``.
        bad_files: ``skip`` unusable files and report them, or ``strict``: stop before training.
        cache: ``memory``: decoded images in RAM (falls back to ``disk`` above
            ``cache_memory_gb``); ``disk``: read decoded images from ``cache_dir`` each time.
        cache_dir: where decoded images (and the chunks a remote stream downloads) persist, shared by
            runs and DDP ranks; ``auto``:
            ``$GEM_LIGHTNING_CACHE``, else ``~/.cache/gem-lightning``; ``null`` keeps them in
            memory only, decoded again by each process.
        cache_memory_gb: memory budget of the in-memory cache, per process.
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
        num_workers: int | None = None,
        pin_memory: bool | None = None,
        persistent_workers: bool = True,
        multiprocessing_context: Literal["forkserver", "fork", "spawn"] = DEFAULT_START_METHOD,
        augment: Augmentation = Augmentation(),
        augment_on: Literal["loader", "device"] = "loader",
        progressive_resizing: ProgressiveResizing | None = None,
        bad_files: Literal["skip", "strict"] = "skip",
        cache: Literal["memory", "disk"] = "memory",
        cache_dir: str | None = "auto",
        cache_memory_gb: float = 4.0,
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
            num_workers=num_workers,
            cache_memory_gb=cache_memory_gb,
            multiprocessing_context=multiprocessing_context,
        )
        if progressive_resizing is not None:
            progressive_resizing.check()
        self.save_hyperparameters(ignore=["augment", "progressive_resizing"])
        self.hparams["augment"] = asdict(augment)  # plain types keep checkpoints loadable with weights_only
        self.hparams["progressive_resizing"] = asdict(progressive_resizing) if progressive_resizing else None
        self.progressive_resizing = progressive_resizing
        self.stream = str(data_dir) if is_stream(data_dir) else None
        self.stream_info = read_info(self.stream) if self.stream else None
        self.data_dir = Path(data_dir).expanduser() if data_dir and not self.stream else None
        self.generate = generate
        self.image_size = image_size
        self.val_fraction = val_fraction
        self.seed = seed
        self.batch_size = batch_size
        self.num_workers = default_num_workers() if num_workers is None else num_workers
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.persistent_workers = persistent_workers and self.num_workers > 0
        self.multiprocessing_context = multiprocessing_context
        self.augment = augment
        if augment_on not in ("loader", "device"):
            raise UserInputError(f"data.augment_on must be 'loader' or 'device', got {augment_on!r}.")
        self.augment_on = augment_on
        self.batch_augment = BatchAugment(augment, image_size) if augment_on == "device" else None
        self.bad_files = bad_files
        self.cache = cache
        if cache_dir == "auto":
            cache_dir = default_cache_dir()
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else None
        self.cache_memory_gb = cache_memory_gb
        self.settings = DecodeSettings(cache_size_for(image_size), autocrop, tuple(background))
        if self.stream_info is not None:
            self.settings = stream_decode_settings(self.stream, self.stream_info, image_size)
        self.predict_path = predict_path
        if corrections and self.stream:
            raise UserInputError(
                "data.corrections applies to a photo folder, not a stream: give it to the folder's `fit`, or drop the photos before `optimize`."
            )
        self.corrections = corrections
        self.class_names = self._read_class_names()
        self.datasets: dict[str, Dataset] = {}
        self.records: dict[str, list[ImageRecord]] = {}
        self._folders: FolderData | None = None

    @property
    def folders(self) -> FolderData:
        """The folder's scans, decoded images and rejects (created once ``data_dir`` holds a dataset)."""
        if self._folders is None:
            self._folders = FolderData(
                self._require_data_dir("fit"),
                self.class_names,
                self.settings,
                cache=self.cache,
                cache_dir=self.cache_dir,
                cache_memory_gb=self.cache_memory_gb,
                bad_files=self.bad_files,
                num_workers=self.num_workers,
                multiprocessing_context=self.multiprocessing_context,
                corrections=self.corrections,
            )
        return self._folders

    @property
    def rejected(self) -> dict[str, list[Rejected]]:
        """Files of each split left out, with why (folders only: a stream left them out when it was made)."""
        return self.folders.rejected if self._folders is not None else {}

    def _read_class_names(self) -> list[str] | None:
        """Class names in label order: the sorted folder names of ``train/``."""
        if self.stream_info is not None:
            return list(self.stream_info.class_names)
        if self._generates():
            return sorted(gem.name for gem in SYNTHETIC_CLASSES)
        if self.data_dir is None:
            return None
        return check_dataset_dir(self.data_dir)

    @property
    def preprocessing(self) -> dict:
        """How photos are decoded before resizing; a model must be served with the same."""
        return {"autocrop": self.settings.autocrop, "background": list(self.settings.background)}

    def _generates(self) -> bool:
        """Whether ``prepare_data`` writes the embedded dataset into ``data_dir``.

        Only into an absent or empty folder, or over an earlier generated dataset: a folder that
        already holds ``train/`` is the user's own dataset and is trained on as it is (the natural
        first try of ``--data.data_dir <my photos>`` with the quickstart config); any other
        non-empty folder is refused, and nothing in it is touched.
        """
        if self.generate != "synthetic":
            return False
        root = self._require_data_dir("generate")
        if is_generated_dataset(root):
            return True
        if (root / "train").is_dir():
            return False
        if root.exists() and (not root.is_dir() or any(root.iterdir())):
            raise DatasetLayoutError(
                f"data.data_dir {str(root)!r} is not empty and holds no 'train/' folder, and data.generate "
                "synthetic writes the embedded dataset only into an absent or empty folder. Give a dataset folder "
                f"(train/<Class>/ images), or a new or empty folder for the embedded one. {EXPECTED_LAYOUT}"
            )
        return True

    def _require_data_dir(self, stage: str) -> Path:
        if self.data_dir is None:
            raise DatasetLayoutError(f"`{stage}` needs a dataset: set --data.data_dir to a folder with train/<Class>/ images.")
        return self.data_dir

    # Lightning hooks -------------------------------------------------------------------------

    def prepare_data(self) -> None:
        """Once per machine: generate the embedded dataset if asked, and fill the disk cache."""
        self._start_worker_server()
        if self._generates():
            generate_gem_dataset(self.data_dir)
        elif self.generate == "synthetic":
            rank_zero_info(f"{str(self.data_dir)!r} already holds a dataset (train/): training on it; nothing is generated.")
        if self.data_dir is not None:
            self.folders.fill_disk_cache()

    def setup(self, stage: str) -> None:
        self._start_worker_server()
        if stage in ("fit", "validate") and "train" not in self.datasets:
            self._setup_stream_train_and_val() if self.stream else self._setup_train_and_val()
        elif stage == "test" and "test" not in self.datasets:
            self._setup_test()
        elif stage == "predict":
            self.datasets["predict"] = self._predict_dataset(self._require_predict_path())

    def _start_worker_server(self) -> None:
        if self.num_workers > 0:
            start_worker_server(self.multiprocessing_context)

    def _training_transform(self):
        # On the device, training batches leave the loader un-augmented, at the cache size.
        return torch.nn.Identity() if self.batch_augment is not None else train_transform(self.image_size, self.augment)

    def _setup_train_and_val(self) -> None:
        store = self.folders.load_split("train")
        self.folders.check_class_sizes(store.records, self.val_fraction)
        labels = [r.label for r in store.records]
        train_idx, val_idx = stratified_split(store.records, self.val_fraction, self.seed)
        self.records["train"] = [store.records[i] for i in train_idx]
        self.records["val"] = [store.records[i] for i in val_idx]
        self.datasets["train"] = CachedImageDataset(store, labels, train_idx, self._training_transform())
        self.datasets["val"] = CachedImageDataset(store, labels, val_idx, eval_transform(self.image_size))
        rank_zero_info(
            f"Split {len(store.records)} training images into {len(train_idx)} train and {len(val_idx)} validation (seed {self.seed})."
        )

    def _setup_stream_train_and_val(self) -> None:
        info = self.stream_info
        if (info.val_fraction, info.seed) != (self.val_fraction, self.seed):
            rank_zero_warn(
                f"The stream {self.stream!r} was split with val_fraction {info.val_fraction} and seed {info.seed} when it "
                f"was optimized; that split is used (data.val_fraction {self.val_fraction}, data.seed {self.seed} are not)."
            )
        self.datasets["train"] = TrainingStream(self.stream, info, self.seed, self.cache_dir)
        has_val = info.counts.get("val", 0) > 0
        self.datasets["val"] = (
            EvaluationStream(self.stream, "val", info, eval_transform(self.image_size), cache_dir=self.cache_dir) if has_val else []
        )
        rank_zero_info(
            f"Streaming {self.stream!r}: {', '.join(f'{k} {v}' for k, v in info.counts.items())} images, "
            f"{len(info.class_names)} classes ({info.image_format}, {info.decode.size} px)."
        )

    def _setup_test(self) -> None:
        if self.stream:
            self.datasets["test"] = EvaluationStream(
                self.stream, "test", self.stream_info, eval_transform(self.image_size), cache_dir=self.cache_dir
            )
            return
        store = self.folders.load_split("test")
        self.records["test"] = store.records
        labels = [r.label for r in store.records]
        self.datasets["test"] = CachedImageDataset(store, labels, list(range(len(labels))), eval_transform(self.image_size))

    def _require_predict_path(self) -> str:
        if not self.predict_path:
            raise UserInputError("`predict` needs --data.predict_path: an image, a folder of images or a glob.")
        return self.predict_path

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

    def _predict_dataset(self, predict_path: str) -> Dataset:
        """The files ``predict_path`` names, or, when it names a stream, its ``test`` split (or the split named)."""
        root, _, split = predict_path.rstrip("/").rpartition("/")
        if split in SPLITS and is_stream(root):
            return EvaluationStream(
                root, split, read_info(root), eval_transform(self.image_size), for_predict=True, cache_dir=self.cache_dir
            )
        if is_stream(predict_path):
            return EvaluationStream(
                predict_path, "test", read_info(predict_path), eval_transform(self.image_size), for_predict=True, cache_dir=self.cache_dir
            )
        return PredictDataset(find_predict_files(predict_path), self.settings, eval_transform(self.image_size))

    def train_dataloader(self) -> DataLoader:
        if self.stream:
            return SignalSafeStreamingDataLoader(
                self.datasets["train"],
                batch_size=self.batch_size,
                num_workers=self.num_workers,
                pin_memory=self.pin_memory,
                multiprocessing_context=self.multiprocessing_context,
                collate_fn=AugmentingCollate(self._training_transform(), collate_channels_last),
            )
        return self._loader(self.datasets["train"], train=True)

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
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers,
            multiprocessing_context=self.multiprocessing_context,
            collate_fn=collate_fn,
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
            fit_loop = self.trainer.fit_loop
            return FitEpochDistributedSampler(
                dataset,
                epoch=lambda: fit_loop.epoch_progress.current.processed,
                num_replicas=world,
                rank=rank,
                shuffle=True,
                seed=self.seed,
            )
        return UnrepeatedDistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=False)

    def class_counts(self, stage: str = "train") -> list[int]:
        """Images of each class in ``stage``'s dataset (after the split), in label order: what class-balanced
        loss weights are computed from."""
        if self.stream:
            raise UserInputError(
                "model.class_weights: balanced weights need per-class counts, which a stream does not keep; use a folder dataset."
            )
        dataset = self.datasets[stage]
        return torch.bincount(torch.tensor([dataset.labels[i] for i in dataset.indices]), minlength=len(self.class_names)).tolist()

    def paths(self, stage: str) -> list[Path] | None:
        """Files behind the evaluation dataset of ``stage`` (``val`` or ``test``), by dataset index;
        None for a stream (its photos are not files here)."""
        if self.stream:
            return None
        return [record.path for record in self.records[stage]]

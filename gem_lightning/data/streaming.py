"""Streamed datasets: a folder-per-class set optimized once into LitData chunks, read from a local
path, a shared filesystem or ``s3://`` without scanning or decoding the whole set first.

A stream is a root with one LitData dataset per split (``train/``, ``val/``, ``test/``) and
``gem_dataset.json`` (:class:`StreamInfo`): the class names, the train/validation split and how
the images were decoded, so a stream cannot be read with other classes or other pixels. The
metadata is written last: a root without it is an unfinished or foreign dataset.

Training iterates a :class:`litdata.StreamingDataset` (shuffled per epoch, sharded across ranks
and nodes, its position saved in checkpoints by :class:`~litdata.StreamingDataLoader`);
evaluation reads its split by index, so each process gets an exact share (metrics equal 1 and N
processes, as with folders).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from litdata import StreamingDataset
from litdata.exceptions import ChunkWaitTimeoutError
from torch.utils.data import Dataset

from gem_lightning.data import object_store
from gem_lightning.data.cache import DecodeSettings
from gem_lightning.data.images import BadImageError
from gem_lightning.data.transforms import cache_size_for
from gem_lightning.errors import UserInputError, explain_failures_with
from gem_lightning.files import atomic_write

METADATA = "gem_dataset.json"
SPLITS = ("train", "val", "test")
ImageFormat = Literal["resized", "encoded"]


@dataclass(frozen=True)
class StreamInfo:
    """What a stream holds and how to read it (``gem_dataset.json``).

    Args:
        class_names: class names in label order.
        image_format: ``resized``: uint8 pixels decoded at ``decode.size`` (no decoding per epoch;
            fixed resolution); ``encoded``: each file's original bytes (smaller on disk for
            photos, any resolution later, decoded every time an image is read).
        decode: how images are (or will be) decoded: side, auto-crop, background.
        val_fraction: share of each class of ``train/`` held out in ``val/``.
        seed: seed of that split.
        counts: images per split.
        source: the folder (or labels file) it was optimized from (for the record).
    """

    class_names: list[str]
    image_format: ImageFormat
    decode: DecodeSettings
    val_fraction: float
    seed: int
    counts: dict[str, int] = field(default_factory=dict)
    source: str = ""
    version: int = 1
    task: Literal["multiclass", "multilabel"] = "multiclass"
    """``multilabel``: optimized from a labels file; each item carries multi-hot ``targets``."""

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "decode": asdict(self.decode)}, indent=1)

    @classmethod
    def from_json(cls, text: str) -> StreamInfo:
        values = json.loads(text)
        decode = values.pop("decode")
        return cls(**values, decode=DecodeSettings(decode["size"], decode["autocrop"], tuple(decode["background"])))


def is_remote(location: str) -> bool:
    """Whether ``location`` is in an object store (``s3://``) rather than on a filesystem."""
    return object_store.is_s3_url(location)


def is_stream(location: str | Path | None) -> bool:
    """Whether ``location`` names a stream: an object-store URL, or a folder holding ``gem_dataset.json``."""
    if not location:
        return False
    return is_remote(str(location)) or (Path(location).expanduser() / METADATA).is_file()


def split_location(root: str, split: str) -> str:
    return f"{str(root).rstrip('/')}/{split}"


def read_info(root: str) -> StreamInfo:
    """The stream's metadata; one clear line when ``root`` is not a finished stream."""
    where = split_location(root, METADATA)
    if is_remote(root):
        with object_store.explain_s3_errors(where):
            text = object_store.read_text(where)
    else:
        text = _read_local(Path(root).expanduser() / METADATA)
    if text is None:
        raise UserInputError(
            f"{root!r} is not a gem-lightning stream: it has no {METADATA} (an unfinished or foreign dataset). "
            "Make one with `python main.py optimize --data_dir <folder> --output <path or s3://bucket/prefix>`."
        )
    try:
        return StreamInfo.from_json(text)
    except (ValueError, KeyError, TypeError) as error:
        raise UserInputError(f"{where!r} is not valid stream metadata ({error}); optimize the dataset again.") from None


def write_info(root: str, info: StreamInfo) -> None:
    if is_remote(root):
        object_store.write_text(split_location(root, METADATA), info.to_json())
    else:
        with atomic_write(Path(root).expanduser() / METADATA, "w", what="the stream's metadata") as file:
            file.write(info.to_json())


def _read_local(path: Path) -> str | None:
    return path.read_text() if path.is_file() else None


_EXPLAINED_ROOTS: set[str] = set()


def explain_stream_failures(root: str) -> None:
    """From now on, a damaged chunk of ``root``, or a failure of the object store holding it, ends the
    command in one line naming it (these surface deep in LitData's threads and the loader workers)."""
    if root not in _EXPLAINED_ROOTS:
        _EXPLAINED_ROOTS.add(root)
        explain_failures_with(partial(_stream_failure, root=root))


def _stream_failure(error: BaseException, root: str) -> UserInputError | None:
    chunk = _damaged_chunk(error)
    if chunk is not None and not is_remote(root):
        return UserInputError(
            f"the stream {root!r} is damaged: its chunk {chunk!r} does not match its index.json (truncated or "
            "overwritten after it was written). Copy the stream again, or optimize the dataset again."
        )
    return object_store.s3_user_error(error, root) if is_remote(root) else None


def _damaged_chunk(error: BaseException) -> str | None:
    """The chunk LitData waited for in vain: its own error, or that error's text re-raised by a loader worker."""
    while error is not None:
        if isinstance(error, ChunkWaitTimeoutError):
            return error.path
        if found := re.search(r"ChunkWaitTimeoutError: Timed out after \S+ waiting for chunk (\S+)\. ", str(error)):
            return found.group(1)
        error = error.__cause__ or error.__context__
    return None


def open_split(root: str, split: str, *, cache_dir: Path | None = None) -> StreamingDataset:
    """LitData's dataset over one split of the stream (chunks are fetched as they are needed)."""
    explain_stream_failures(root)
    location = split_location(root, split)
    with object_store.explain_s3_errors(location):
        return StreamingDataset(location, **stream_options(location, cache_dir))


def stream_options(location: str, cache_dir: Path | None) -> dict[str, Any]:
    """Where LitData keeps the chunks it downloads (below ``cache_dir`` for a remote stream; a local one
    is read in place) and how it reaches the store."""
    options: dict[str, Any] = {"storage_options": object_store.storage_options(location)}
    if cache_dir is not None and is_remote(location):
        options["cache_dir"] = str(cache_dir / "streams" / hashlib.sha256(location.encode()).hexdigest()[:16])
    return options


def stream_decode_settings(root: str, info: StreamInfo, image_size: int) -> DecodeSettings:
    """How the stream's images reach ``image_size``: as stored (``resized``, which fixes the size), or
    decoded from the original bytes at the size's cache side (``encoded``), with the stream's crop and background."""
    wanted = cache_size_for(image_size)
    if info.image_format == "encoded":
        return replace(info.decode, size=wanted)
    if info.decode.size != wanted:
        raise UserInputError(
            f"data.image_size {image_size} needs {wanted} px stored images, but the stream {root!r} holds {info.decode.size} px "
            "ones: train at the size it was optimized for, or optimize it again with that --image_size (or --format encoded, "
            "which serves any size)."
        )
    return info.decode


def item_target(item: dict[str, Any], info: StreamInfo) -> int | torch.Tensor:
    """A stored item's target: its class index, or (multi-label) its multi-hot float vector."""
    if info.task == "multilabel":
        return torch.from_numpy(np.asarray(item["targets"], dtype=np.float32))
    return int(item["label"])


def item_pixels(item: dict[str, Any], info: StreamInfo) -> torch.Tensor:
    """A stored item's image as ``(3, S, S)`` uint8, decoding the original bytes if that is how it was stored."""
    image = item["image"]
    if info.image_format == "encoded":
        image = info.decode.decode(bytes(image))
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)


class TrainingStream(StreamingDataset):
    """``(image, label, index)`` triples streamed for training: shuffled each epoch, sharded per rank.

    Images leave un-augmented; :class:`AugmentingCollate` augments each batch in the loader workers,
    drawing its random parameters together as the folder path does.

    Args:
        root: the stream.
        info: its metadata.
        seed: shuffling seed (each epoch shuffles anew from it).
        cache_dir: where downloaded chunks are kept (see :func:`stream_options`).
    """

    def __init__(self, root: str, info: StreamInfo, seed: int, cache_dir: Path | None = None) -> None:
        location = split_location(root, "train")
        explain_stream_failures(root)
        super().__init__(location, shuffle=True, seed=seed, **stream_options(location, cache_dir))
        self.info = info

    def __getitem__(self, index: Any) -> tuple[torch.Tensor, int, int]:
        item = super().__getitem__(index)
        return item_pixels(item, self.info), item_target(item, self.info), int(item["index"])


class AugmentingCollate:
    """Applies the training transform to a whole batch (its ``many`` when it has one), then batches it."""

    def __init__(self, transform: Callable, collate: Callable) -> None:
        self.transform = transform
        self.collate = collate

    def __call__(self, items: list[tuple[torch.Tensor, int, int]]):
        images = [image for image, _, _ in items]
        many = getattr(self.transform, "many", None)
        images = many(images) if many is not None else [self.transform(image) for image in images]
        return self.collate([(image, label, index) for image, (_, label, index) in zip(images, items)])


class EvaluationStream(Dataset):
    """One split of a stream read by index: ``(image, label, position)`` triples, or prediction items.

    Indexing (not iterating) lets an unpadded distributed sampler give each process an exact share.
    """

    def __init__(
        self, root: str, split: str, info: StreamInfo, transform: Callable, *, for_predict: bool = False, cache_dir: Path | None = None
    ) -> None:
        self.root, self.split, self.info = root, split, info
        self.transform = transform
        self.for_predict = for_predict
        self.dataset = open_split(root, split, cache_dir=cache_dir)

    def __len__(self) -> int:
        # The split's whole length: under DDP LitData's len() is this process's share, but
        # indexing is global, and the unpadded sampler shares the indices out itself.
        return self.info.counts[self.split]

    def __getitem__(self, position: int):
        item = self.dataset[position]
        try:
            image = self.transform(item_pixels(item, self.info))
        except BadImageError as error:
            if self.for_predict:
                return {"index": position, "path": item["path"], "reason": error.reason}
            raise
        if self.for_predict:
            return {"image": image, "index": position, "path": item["path"]}
        return image, item_target(item, self.info), position

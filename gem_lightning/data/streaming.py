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

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
import torch
from litdata import StreamingDataset
from torch.utils.data import Dataset

from gem_lightning.data.cache import DecodeSettings
from gem_lightning.data.images import BadImageError
from gem_lightning.data.transforms import cache_size_for
from gem_lightning.errors import UserInputError

METADATA = "gem_dataset.json"
SPLITS = ("train", "val", "test")
REMOTE_PREFIXES = ("s3://", "gs://", "azure://")
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
        source: the folder it was optimized from (for the record).
    """

    class_names: list[str]
    image_format: ImageFormat
    decode: DecodeSettings
    val_fraction: float
    seed: int
    counts: dict[str, int] = field(default_factory=dict)
    source: str = ""
    version: int = 1

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "decode": asdict(self.decode)}, indent=1)

    @classmethod
    def from_json(cls, text: str) -> StreamInfo:
        values = json.loads(text)
        decode = values.pop("decode")
        return cls(**values, decode=DecodeSettings(decode["size"], decode["autocrop"], tuple(decode["background"])))


def is_remote(location: str) -> bool:
    return str(location).startswith(REMOTE_PREFIXES)


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
    text = _read_remote(where) if is_remote(root) else _read_local(Path(root).expanduser() / METADATA)
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
        _write_remote(split_location(root, METADATA), info.to_json())
    else:
        (Path(root).expanduser() / METADATA).write_text(info.to_json())


def _read_local(path: Path) -> str | None:
    return path.read_text() if path.is_file() else None


def open_split(root: str, split: str, *, shuffle: bool = False, seed: int = 42) -> StreamingDataset:
    """LitData's dataset over one split of the stream (chunks are fetched as they are needed)."""
    location = split_location(root, split)
    return _checked(
        lambda: StreamingDataset(location, shuffle=shuffle, seed=seed, storage_options=_storage_options(location)),
        location,
    )


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
    """

    def __init__(self, root: str, info: StreamInfo, seed: int) -> None:
        location = split_location(root, "train")
        super().__init__(location, shuffle=True, seed=seed, storage_options=_storage_options(location))
        self.info = info

    def __getitem__(self, index: Any) -> tuple[torch.Tensor, int, int]:
        item = super().__getitem__(index)
        return item_pixels(item, self.info), int(item["label"]), int(item["index"])


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

    def __init__(self, root: str, split: str, info: StreamInfo, transform: Callable, *, for_predict: bool = False) -> None:
        self.root, self.split, self.info = root, split, info
        self.transform = transform
        self.for_predict = for_predict
        self.dataset = open_split(root, split)

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
        return image, int(item["label"]), position

    def paths(self) -> list[str]:
        """The stored relative path of every item, by position."""
        return [self.dataset[i]["path"] for i in range(len(self))]


def _storage_options(location: str) -> dict:  # replaced by the object-store module
    return {}


def _checked(open_dataset: Callable, location: str):
    return open_dataset()


def _read_remote(url: str) -> str | None:
    raise NotImplementedError(url)


def _write_remote(url: str, text: str) -> None:
    raise NotImplementedError(url)

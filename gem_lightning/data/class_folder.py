"""One folder of ``<Class>/`` photos read as evaluation reads them, against a model's classes: the
held-out photos of ``calibrate --calibration_dir``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from gem_lightning.data.cache import Cache, DecodeSettings
from gem_lightning.data.datasets import CachedImageDataset
from gem_lightning.data.folders import FolderData
from gem_lightning.data.loader import Loader
from gem_lightning.data.provenance import PhotoRecord
from gem_lightning.data.scan import list_classes
from gem_lightning.errors import UserInputError


def class_folder_dataset(
    folder: Path, class_names: list[str], settings: DecodeSettings, *, cache: Cache, loader: Loader, transform: Callable, what: str
) -> tuple[CachedImageDataset, PhotoRecord]:
    """The photos of ``folder/<Class>/`` labelled in ``class_names``' order, decoded with ``settings``
    (through the cache, as training decodes), and the record of which photos they are.

    Args:
        what: the setting that named ``folder``, for the messages (``--calibration_dir``).

    Raises:
        UserInputError: ``folder`` is missing, holds no class folders, or class folders that are not
            among ``class_names``; or no usable photo.
    """
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise UserInputError(f"{what} {str(folder)!r} is not a folder: give a folder of <Class>/ photos.")
    found = list_classes(folder)
    unknown = [name for name in found if name not in class_names]
    if unknown or not found:
        listed = f"class folders the model does not know: {', '.join(unknown[:5])}" if unknown else "no class folders"
        raise UserInputError(
            f"{what} {str(folder)!r} has {listed}; it needs <Class>/ folders named as the model's "
            f"{len(class_names)} classes ({', '.join(class_names[:5])}, ...)."
        )
    data = FolderData(
        folder.parent,
        class_names,
        settings,
        cache=cache,
        bad_files="skip",
        num_workers=loader.workers,
        multiprocessing_context=loader.multiprocessing_context,
    )
    store = data.load_split(folder.name)
    labels = [record.label for record in store.records]
    return CachedImageDataset(store, labels, list(range(len(labels))), transform), PhotoRecord.of_files(r.digest for r in store.records)

"""Where the data module's images come from: one class per kind of source, chosen by ``data.data_dir``.

``base.DataSource`` is the interface; ``folders.FolderSource`` reads a folder per class,
``stream.StreamSource`` a stream written by ``main.py optimize``, ``labels_file.LabelsFileSource``
a CSV of photos with several labels each. ``predict.predict_dataset``
reads whatever ``data.predict_path`` names.
"""

from gem_lightning.data.sources.base import DataSource, Stage, Task, Transforms
from gem_lightning.data.sources.folders import FolderSource
from gem_lightning.data.sources.labels_file import LabelsFileSource
from gem_lightning.data.sources.stream import StreamSource

__all__ = ["DataSource", "FolderSource", "LabelsFileSource", "Stage", "StreamSource", "Task", "Transforms"]

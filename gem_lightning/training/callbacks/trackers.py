"""Give a run's trackers the files the run writes into its folder: MLflow the config and the reports, TensorBoard the images.

Lightning's loggers send hyperparameters, metrics, the network's graph (TensorBoard's ``log_graph``)
and checkpoints (MLflow's ``log_model``) themselves. The files that other callbacks write into the
run folder reach no tracker on their own: LightningCLI's ``config.yaml``, ``learning_curves.png``,
``report-<stage>/`` (:mod:`gem_lightning.training.callbacks.reports`), ``metrics.csv``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import Logger, MLFlowLogger, TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_warn
from PIL import Image
from typing_extensions import override

from gem_lightning.tracking.logger import ResilientMLFlowLogger

ARTIFACT_SUFFIXES = (".yaml", ".png", ".md", ".csv", ".json")
"""What of the run folder MLflow gets (checkpoints go through ``log_model``, TensorBoard's events stay local)."""

IMAGE_SUFFIX = ".png"


class TrackerArtifacts(Callback):
    """Uploads the run folder's files to the run's MLflow loggers, and adds its images to its TensorBoard loggers.

    The config goes at the start of training, so that a run is found with it even while it runs;
    everything new or changed goes at the end of each command (``teardown``), after the reports are
    written and before the loggers close the run. In MLflow a file keeps its place in the folder
    (``report-test/confusion_matrix.png``); in TensorBoard an image's tag is that path without
    ``.png``, at the run's global step. The run folder is the first logger's ``log_dir`` (a
    ``CSVLogger`` or ``TensorBoardLogger``, as in ``configs/``); without one there is nothing to send.

    When an MLflow server went away during the run (:class:`~gem_lightning.tracking.logger.ResilientMLFlowLogger`),
    it says at the end where the whole run is on disk.
    """

    def __init__(self) -> None:
        self._sent: dict[tuple[int, Path], int] = {}
        """(logger, file) -> the file's modification time when it was sent."""

    @override
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._send(trainer, wanted=lambda path: path.name == "config.yaml")

    @override
    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._send(trainer)
        for logger in trainer.loggers:
            if isinstance(logger, ResilientMLFlowLogger) and logger.lost:
                rank_zero_warn(where_the_run_is(trainer, logger))

    def _send(self, trainer: Trainer, wanted: Callable[[Path], bool] = lambda path: True) -> None:
        folder = run_folder(trainer) if trainer.is_global_zero else None
        if folder is None:
            return
        files = [path for path in run_files(folder) if wanted(path)]
        for logger in trainer.loggers:
            for path in files:
                if self._is_new(logger, path) and _send_file(logger, path, folder, trainer.global_step):
                    self._sent[(id(logger), path)] = path.stat().st_mtime_ns

    def _is_new(self, logger: Logger, path: Path) -> bool:
        return self._sent.get((id(logger), path)) != path.stat().st_mtime_ns


def run_folder(trainer: Trainer) -> Path | None:
    """The folder the run writes its files into: the first logger's ``log_dir``, or None without such a logger."""
    folder = getattr(trainer.loggers[0], "log_dir", None) if trainer.loggers else None
    return Path(folder) if folder and Path(folder).is_dir() else None


def run_files(folder: Path) -> list[Path]:
    """The files of the run folder that trackers get (:data:`ARTIFACT_SUFFIXES`), in a stable order."""
    return sorted(path for path in folder.rglob("*") if path.suffix in ARTIFACT_SUFFIXES and path.is_file())


def _send_file(logger: Logger, path: Path, folder: Path, step: int) -> bool:
    """Give ``logger`` one file of the run folder; whether it took it (a logger of another kind takes nothing)."""
    relative = path.relative_to(folder)
    artifact_folder = relative.parent.as_posix() if relative.parent.parts else None
    if isinstance(logger, ResilientMLFlowLogger):
        return logger.log_artifact(path, artifact_folder)
    if isinstance(logger, MLFlowLogger):  # Lightning's own: a failure ends the command, as its other requests do
        logger.experiment.log_artifact(logger.run_id, str(path), artifact_folder)
        return True
    if isinstance(logger, TensorBoardLogger) and path.suffix == IMAGE_SUFFIX:
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("RGB"))
        logger.experiment.add_image(relative.with_suffix("").as_posix(), pixels, global_step=step, dataformats="HWC")
        return True
    return False


def where_the_run_is(trainer: Trainer, logger: ResilientMLFlowLogger) -> str:
    """One line for the end of a run whose MLflow server went away: what MLflow lacks, and where all of it is."""
    checkpoint = trainer.checkpoint_callback
    last = getattr(checkpoint, "last_model_path", "") or getattr(checkpoint, "best_model_path", "")
    kept = f"its checkpoints are in {Path(last).parent} ({Path(last).name}, ...)" if last else "it saved no checkpoint"
    return (
        f"The MLflow run {logger.run_id} lacks what came after the server failed {logger.lost}; nothing is lost: {kept}, "
        f"and its logs and reports are in {run_folder(trainer) or trainer.log_dir}."
    )

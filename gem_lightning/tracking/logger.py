"""Lightning's MLflow logger, made to outlive its tracking server: :class:`ResilientMLFlowLogger`."""

from __future__ import annotations

from argparse import Namespace
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import MLFlowLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from typing_extensions import override

from gem_lightning.tracking.server import failure_reason, tracker_errors, tracking_server


class ResilientMLFlowLogger(MLFlowLogger):
    """``MLFlowLogger`` whose training goes on when the tracking server goes away.

    Lightning's logger raises inside the training loop when a request fails (after MLflow's own
    retries, about four minutes), which would end a fit of many hours for the sake of its charts.
    This one warns once, naming the server, the step and the reason, and sends nothing more; the
    run's checkpoints, config and reports stay complete in its local folder, which
    :class:`~gem_lightning.training.callbacks.trackers.TrackerArtifacts` names when the run ends.
    At the end of a run that logged its checkpoints (``log_model``) it prints the best one's
    ``runs:/`` URI, which ``--ckpt_path`` takes. Same arguments as ``MLFlowLogger``.
    """

    lost: str | None = None
    """Why, and from which step, nothing more was sent to the server; None while it answers."""
    last_step: int = 0
    """The step of the latest metrics logged (or attempted)."""
    checkpoint_callback: ModelCheckpoint | None = None
    """The checkpoint callback whose saves Lightning reported (``after_save_checkpoint``)."""

    def __init__(self, *args: Any, tracking_uri: str | None = None, **kwargs: Any) -> None:
        """``MLFlowLogger``'s arguments. ``tracking_uri``: the server; by default ``$MLFLOW_TRACKING_URI`` when
        the logger is made (Lightning reads it when it is imported), else MLflow's own default store
        (``./mlflow.db`` in MLflow 3, which refuses the ``./mlruns`` folder Lightning would fall back to)."""
        import mlflow

        super().__init__(*args, tracking_uri=tracking_uri or mlflow.get_tracking_uri(), **kwargs)

    @override
    def log_hyperparams(self, params: dict[str, Any] | Namespace) -> None:
        self.attempt(super().log_hyperparams, params)

    @override
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        self.last_step = self.last_step if step is None else step
        self.attempt(super().log_metrics, metrics, step)

    @override
    def after_save_checkpoint(self, checkpoint_callback: ModelCheckpoint) -> None:
        self.checkpoint_callback = checkpoint_callback
        self.attempt(super().after_save_checkpoint, checkpoint_callback)

    @override
    def finalize(self, status: str = "success") -> None:
        if self.attempt(super().finalize, status) and self.checkpoint_callback is not None:
            self.attempt(self.announce_best_checkpoint)

    def log_artifact(self, local_path: str | Path, artifact_path: str | None = None) -> bool:
        """Upload a file into the run (``artifact_path``: the folder there); whether it was sent."""
        return self.attempt(lambda: self.experiment.log_artifact(self.run_id, str(local_path), artifact_path))

    def announce_best_checkpoint(self) -> None:
        """Print the ``runs:/`` URI of the best checkpoint, if Lightning logged it (``log_model``)."""
        best = Path(getattr(self.checkpoint_callback, "best_model_path", "") or "")
        if not best.name:
            return
        folder = best.stem  # MLFlowLogger logs each checkpoint into a folder named after its file
        if any(Path(artifact.path).name == best.name for artifact in self.experiment.list_artifacts(self.run_id, folder)):
            uri = f"runs:/{self.run_id}/{folder}/{best.name}"
            rank_zero_info(f"MLflow: the best checkpoint of this run is {uri} (--ckpt_path {uri}).")

    def attempt(self, request: Callable[..., Any], *args: Any) -> bool:
        """``request(*args)`` unless the server was lost; a failure loses it, with one warning. Whether it was sent."""
        if self.lost is not None:
            return False
        try:
            request(*args)
        except tracker_errors() as error:
            self.lost = f"at step {self.last_step} ({failure_reason(error)})"
            rank_zero_warn(
                f"The MLflow tracking server {tracking_server()} failed {self.lost}: nothing more is sent to it, and the "
                "training goes on; the run's checkpoints and logs stay in its local folder."
            )
            return False
        return True

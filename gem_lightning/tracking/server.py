"""The MLflow tracking server as a command asks it before it starts: an answer in seconds, a failure in one line.

MLflow's client retries a request that gets no answer for about four minutes (7 retries, backoff
factor 2, 120 s timeout), which rides out a server restart during a run. A command that has not
started yet should not wait that long to learn that the server is down: :func:`check_trackers_reachable`
and :mod:`gem_lightning.tracking.checkpoint_uri` ask :func:`answering_quickly`.
"""

from __future__ import annotations

import importlib.util
import os
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from lightning.pytorch.loggers import Logger, MLFlowLogger

from gem_lightning.errors import UserInputError

TRACKER_PACKAGES = {"MLFlowLogger": ("mlflow", ("mlflow",)), "TensorBoardLogger": ("tensorboard", ("tensorboard", "tensorboardX"))}
"""Logger class name (or its ending) -> (gem-lightning's extra, the packages any one of which it needs)."""

QUICK_SETTINGS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
"""MLflow's HTTP settings for a question asked before a run: answered, or refused, within seconds."""


@contextmanager
def answering_quickly() -> Iterator[None]:
    """Within: MLflow's HTTP requests use :data:`QUICK_SETTINGS`, except those the user set in the environment."""
    ours = [name for name in QUICK_SETTINGS if name not in os.environ]
    os.environ.update({name: QUICK_SETTINGS[name] for name in ours})
    try:
        yield
    finally:
        for name in ours:
            os.environ.pop(name, None)


def tracker_errors() -> tuple[type[BaseException], ...]:
    """The exceptions by which MLflow's client says that the server did not answer, or refused a request."""
    from mlflow.exceptions import MlflowException
    from requests.exceptions import RequestException

    return (MlflowException, RequestException)


def failure_reason(error: BaseException) -> str:
    """The gist of an MLflow client error in a few words: ``Connection refused``, ``Run with id=... not found``.

    The client's messages embed the whole request and urllib3's retry history; the operating system's
    reason (``[Errno 111] Connection refused``) is what the user can act on.
    """
    text = str(error).strip()
    system = re.search(r"\[Errno -?\d+\] ([^\"'()]+)", text)
    if system:
        return system.group(1).strip()
    if "timed out" in text.lower():
        return "no answer in time"
    first_line = text.splitlines()[0] if text else type(error).__name__
    return first_line.removeprefix("RESOURCE_DOES_NOT_EXIST: ")[:300].rstrip(". ")


def tracking_server() -> str:
    """The tracking server MLflow's client talks to: the one a logger set, else ``$MLFLOW_TRACKING_URI``, else MLflow's default."""
    import mlflow

    return mlflow.get_tracking_uri()


def named_server() -> str:
    """The tracking server as a message names it, saying so when it is MLflow's default (``$MLFLOW_TRACKING_URI`` unset)."""
    default = "" if os.environ.get("MLFLOW_TRACKING_URI") else " (MLflow's default: set MLFLOW_TRACKING_URI to yours)"
    return f"the MLflow tracking server {tracking_server()}{default}"


def check_trackers_reachable(loggers: Iterable[Logger]) -> None:
    """Start every MLflow logger's run now, and refuse in one line a tracking server that does not answer.

    Lightning starts the run in its setup, after the data is scanned, and an unreachable server would
    end it in a traceback after minutes of retries; here it ends the command before anything runs.

    Raises:
        UserInputError: an MLflow logger's server does not answer, or refuses to start the run.
    """
    for logger in loggers:
        if not isinstance(logger, MLFlowLogger):
            continue
        with answering_quickly():
            try:
                _ = logger.run_id  # creates the experiment and the run, as Lightning's setup would
            except tracker_errors() as error:
                raise UserInputError(
                    f"cannot log to the MLflow tracking server {tracking_server()} ({failure_reason(error)}): start it, set "
                    "MLFLOW_TRACKING_URI to a server that answers, or leave out configs/mlflow.yaml. Nothing was run."
                ) from error


def check_tracker_packages(logger_class_paths: Iterable[str]) -> None:
    """Refuse, in one line, a tracker's logger whose package is not installed.

    Its class would fail while the config is instantiated, in a page of jsonargparse's errors.
    """
    for class_path in logger_class_paths:
        for ending, (extra, packages) in TRACKER_PACKAGES.items():
            if class_path.endswith(ending) and not any(importlib.util.find_spec(package) for package in packages):
                raise UserInputError(f"trainer.logger {class_path} needs the {extra} package: pip install 'gem-lightning[{extra}]'.")

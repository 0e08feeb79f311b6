"""Checkpoints kept by MLflow, as local files: ``runs:/<run id>/<path>`` and ``models:/<name>/<version>``.

Every command that takes a checkpoint passes what the user gave through :func:`resolve_checkpoint`
before anything reads it (``fit``/``validate``/``test``/``predict``'s ``--ckpt_path``, ``serve``,
``calibrate``, ``export``, ``ensemble``, and ``load_model``); the rest of the package only ever
sees local files. The download goes through MLflow's own client
(``mlflow.artifacts.download_artifacts``), from the tracking server of ``$MLFLOW_TRACKING_URI``,
into ``<cache dir>/mlflow/<hash of server and URI>/`` (``$GEM_LIGHTNING_CACHE``). It is fetched again
each time: ``last.ckpt`` of a running run changes, and ``models:/<name>@<alias>`` moves.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path, PurePosixPath

from gem_lightning.data.cache import default_cache_dir
from gem_lightning.errors import UserInputError
from gem_lightning.tracking.server import answering_quickly, failure_reason, named_server, tracker_errors, tracking_server

STORE_SCHEMES = ("runs:/", "models:/")
"""The URIs of checkpoints kept by MLflow: an artifact of a run, or a registered model's version (or alias)."""

CHECKPOINT_SUFFIX = ".ckpt"


def is_store_uri(ckpt_path: str | Path | None) -> bool:
    """Whether ``ckpt_path`` names a checkpoint kept by MLflow rather than a local file."""
    return bool(ckpt_path) and str(ckpt_path).startswith(STORE_SCHEMES)


def resolve_checkpoint(ckpt_path: str | Path) -> str | Path:
    """A local checkpoint file for ``ckpt_path``: a local path as given; an MLflow URI downloaded.

    A URI may name a ``.ckpt`` file or a folder holding exactly one (a registered model's version
    is the folder it was registered from).

    Raises:
        UserInputError: mlflow is not installed; the tracking server does not answer; the run, model,
            version or path does not exist; the folder holds no checkpoint, or several. The message
            names the URI and the server.
    """
    if not is_store_uri(ckpt_path):
        return ckpt_path
    uri = str(ckpt_path)
    try:
        import mlflow
    except ImportError:
        raise UserInputError(
            f"checkpoint {uri!r} is kept by MLflow, and mlflow is not installed: pip install 'gem-lightning[mlflow]'."
        ) from None
    where = f"checkpoint {uri!r} on {named_server()}"
    with answering_quickly():
        try:
            mlflow.MlflowClient().search_experiments(max_results=1)
        except tracker_errors() as error:
            raise UserInputError(
                f"{where}: the server does not answer ({failure_reason(error)}); start it, or set MLFLOW_TRACKING_URI "
                "to the server that holds the checkpoint."
            ) from error
    return _download(uri, where)


def _download(uri: str, where: str) -> Path:
    """The checkpoint at ``uri``, downloaded into its own cache folder (replacing an earlier download)."""
    import mlflow

    folder = Path(default_cache_dir()) / "mlflow" / hashlib.sha256(f"{tracking_server()} {uri}".encode()).hexdigest()[:16]
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder, prefix=".download-") as staging:
        try:
            downloaded = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=staging))
        except tracker_errors() as error:
            raise UserInputError(f"{where}: {failure_reason(error)}{_what_the_run_holds(uri)}.") from error
        found = _the_checkpoint(downloaded, uri)
        local = folder / found.name
        os.replace(found, local)  # same folder: readers see the old file or the new one, never a partial one
    return local


def _what_the_run_holds(uri: str) -> str:
    """For a ``runs:/`` URI whose path is not in the run: what the run holds there, as a hint; else nothing."""
    import mlflow

    run_id, _, path = uri.removeprefix(STORE_SCHEMES[0]).partition("/")
    if not uri.startswith(STORE_SCHEMES[0]) or not run_id:
        return ""
    folder = PurePosixPath(path).parent.as_posix() if "/" in path.strip("/") else None
    try:
        artifacts = mlflow.MlflowClient().list_artifacts(run_id, folder)
    except tracker_errors():
        return ""
    names = [artifact.path + ("/" if artifact.is_dir else "") for artifact in artifacts]
    return f"; run {run_id} holds {', '.join(names[:8])}{', ...' if len(names) > 8 else ''} there" if names else ""


def _the_checkpoint(downloaded: Path, uri: str) -> Path:
    """The one checkpoint file at ``downloaded``: the file itself, or the only ``.ckpt`` in the folder."""
    if downloaded.is_file():
        return downloaded
    found = sorted(downloaded.rglob(f"*{CHECKPOINT_SUFFIX}"))
    if len(found) == 1:
        return found[0]
    if not found:
        held = ", ".join(sorted(path.name for path in downloaded.iterdir())[:5]) or "nothing"
        raise UserInputError(f"checkpoint {uri!r} is a folder without a {CHECKPOINT_SUFFIX} file (it holds {held}).")
    names = ", ".join(str(path.relative_to(downloaded)) for path in found[:5])
    raise UserInputError(f"checkpoint {uri!r} is a folder of {len(found)} checkpoints ({names}): add the one to use to the URI.")

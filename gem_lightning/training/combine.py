"""Checkpoints made from checkpoints: an ensemble of several, and a copy of one with its calibration.

Both are ordinary gem-lightning checkpoints, so ``test``, ``predict``, ``serve``, ``export`` and the
Python API use them as they use one trained model.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning
import torch

from gem_lightning.data.provenance import PhotoRecord
from gem_lightning.errors import UserInputError
from gem_lightning.files import atomic_write
from gem_lightning.models.ensemble import ENSEMBLE_MEAN, ENSEMBLE_STD, EnsembleSpec
from gem_lightning.training.checkpoints import load_checkpoint, upgrade_hparams

MODEL_PREFIX = "model."
"""Where the module keeps its ImageClassifier: ``model.network.*`` in a checkpoint's state dict."""

CALIBRATION = "calibration"
"""Where a calibrated checkpoint keeps what ``calibrate`` fitted besides the temperature."""
TRAINED_ON = "trained_on"
DATA_STATE = "GemDataModule"
"""Where Lightning keeps the data module's ``state_dict``: which photos trained the model (``TRAINED_ON``)."""

SAME_IN_EVERY_MEMBER = ("class_names", "image_size", "preprocessing")
"""What members must share: the classes in the same order, and photos prepared the same way."""


def ensemble_checkpoint(ckpt_paths: Sequence[str | Path], tta: str | None = None) -> dict[str, Any]:
    """One checkpoint whose network averages the members' calibrated probabilities.

    Args:
        ckpt_paths: two or more trained checkpoints with the same classes, image size and preprocessing.
        tta: the ensemble's test-time augmentation; default: the members' own when they all agree, else none.

    Raises:
        UserInputError: fewer than two checkpoints, or members that differ in classes, size or preprocessing.
    """
    if len(ckpt_paths) < 2:
        raise UserInputError(f"an ensemble needs at least two checkpoints, got {len(ckpt_paths)}.")
    members = [(str(path), load_checkpoint(path)) for path in ckpt_paths]
    hparams = [upgrade_hparams(dict(checkpoint["hyper_parameters"])) for _, checkpoint in members]
    multilabel = [path for (path, _), h in zip(members, hparams) if h.get("task") == "multilabel"]
    if multilabel:
        raise UserInputError(f"{multilabel[0]!r} is a multi-label model; ensembles average single-label models' probabilities.")
    _check_members_agree([path for path, _ in members], hparams)
    first = hparams[0]
    ttas = {h.get("tta", "none") for h in hparams}
    ensemble_hparams = {
        **{key: first.get(key) for key in SAME_IN_EVERY_MEMBER},
        "network": EnsembleSpec(tuple(_member_config(h) for h in hparams)).to_config(),
        "mean": ENSEMBLE_MEAN,
        "std": ENSEMBLE_STD,
        "tta": tta or (ttas.pop() if len(ttas) == 1 else "none"),
        "top_k": first.get("top_k", 5),
        "distillation": None,
    }
    state = {
        f"{MODEL_PREFIX}network.members.{index}.{key.removeprefix(MODEL_PREFIX)}": tensor
        for index, (_, checkpoint) in enumerate(members)
        for key, tensor in checkpoint["state_dict"].items()
        if key.startswith(MODEL_PREFIX)
    }
    ensemble = {"state_dict": state, "hyper_parameters": ensemble_hparams, "pytorch-lightning_version": lightning.__version__}
    records = [checkpoint.get(DATA_STATE, {}).get(TRAINED_ON) for _, checkpoint in members]
    if all(record is not None for record in records):  # one member without a record leaves the union unknown
        union = functools.reduce(operator.or_, (PhotoRecord.from_state(record) for record in records))
        ensemble[DATA_STATE] = {TRAINED_ON: union.state()}
    return ensemble


def _member_config(hparams: dict[str, Any]) -> dict[str, Any]:
    return {
        "network": hparams["network"],
        "mean": list(hparams["mean"]),
        "std": list(hparams["std"]),
        "temperature": hparams.get("temperature", 1.0),
    }


def _check_members_agree(paths: list[str], hparams: list[dict[str, Any]]) -> None:
    for key in SAME_IN_EVERY_MEMBER:
        for path, other in zip(paths[1:], hparams[1:]):
            if other.get(key) != hparams[0].get(key):
                what = _difference(key, hparams[0].get(key), other.get(key))
                raise UserInputError(f"{path!r} cannot join an ensemble with {paths[0]!r}: {what}.")


def _difference(key: str, first: Any, other: Any) -> str:
    if key == "class_names":
        return f"their classes differ ({len(first)} vs {len(other)} classes; first difference: {_first_difference(first, other)})"
    return f"their {key} differs ({first!r} vs {other!r}); ensemble checkpoints trained on the same photos at the same size"


def _first_difference(first: list[str], other: list[str]) -> str:
    for a, b in zip(first, other):
        if a != b:
            return f"{a!r} vs {b!r}"
    return "one has more classes"


def calibrated_checkpoint(ckpt_path: str | Path, temperature: float, record: dict[str, Any] | None = None) -> dict[str, Any]:
    """``ckpt_path``'s checkpoint with its calibration temperature set to ``temperature`` and, when
    given, the prediction-set and "unknown" record (``gem_lightning.training.calibration_record``)."""
    checkpoint = dict(load_checkpoint(ckpt_path))
    checkpoint["hyper_parameters"] = {**upgrade_hparams(dict(checkpoint["hyper_parameters"])), "temperature": temperature}
    if record is not None:
        checkpoint[CALIBRATION] = record
    return checkpoint


def save_checkpoint(checkpoint: dict[str, Any], path: str | Path) -> Path:
    """Write ``checkpoint`` to ``path`` all-or-nothing; refuses to overwrite an existing file."""
    path = Path(path)
    if path.exists():
        raise UserInputError(f"{str(path)!r} already exists: give another --output (nothing was overwritten).")
    with atomic_write(path, what="the checkpoint") as file:
        torch.save(checkpoint, file)
    return path

"""Read a checkpoint file before anything is built from it: say plainly what is wrong with it, and
bring the hyperparameters of earlier versions to today's shape (:func:`upgrade_hparams`).

``torch.load`` answers a missing, empty, truncated or foreign file with an ``EOFError``, a
``KeyError`` from the unpickler or a zip-reader ``RuntimeError``; a checkpoint whose weights do not
fit the model ends in a page of ``load_state_dict`` key lists. Here each case is one
:class:`~gem_lightning.errors.UserInputError` naming the file and what to do.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gem_lightning.errors import UserInputError

REQUIRED_HPARAMS = ("class_names", "image_size")
"""Hyperparameters without which a checkpoint cannot be served: the rest have defaults."""

RESUME_KEYWORDS = ("last", "best", "hpc")
"""``fit --ckpt_path`` values that Lightning resolves itself (``last``: the newest ``last.ckpt``)."""

WHERE = "fit writes checkpoints to runs/<name>/version_<n>/checkpoints/ (last.ckpt, best-<epoch>.ckpt)"

_cache: dict[tuple[str, int, int], dict[str, Any]] = {}


def load_checkpoint(ckpt_path: str | Path) -> dict[str, Any]:
    """The contents of a gem-lightning checkpoint, loaded with ``weights_only``.

    Raises:
        UserInputError: the file is missing, a folder, empty, truncated or corrupt, not a
            checkpoint, a Lightning checkpoint of another model, or lacks :data:`REQUIRED_HPARAMS`.
    """
    path = Path(ckpt_path).expanduser()
    name = repr(str(ckpt_path))
    if not path.exists():
        hint = f" (`{ckpt_path}` is a keyword only for `fit`, to resume)" if str(ckpt_path) in RESUME_KEYWORDS else ""
        raise UserInputError(f"checkpoint {name} does not exist{hint}; {WHERE}.")
    if path.is_dir():
        raise UserInputError(f"checkpoint {name} is a folder, not a checkpoint file; {WHERE}.")
    stat = path.stat()
    key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size)
    if key in _cache:
        return _cache[key]
    if stat.st_size == 0:
        raise UserInputError(f"checkpoint {name} is empty (0 bytes): its save or copy did not finish; use another checkpoint.")
    checkpoint = _read(path, name)
    _check_contents(checkpoint, name)
    _cache.clear()  # one entry: the CLI reads the same file for its settings and its weights
    _cache[key] = checkpoint
    return checkpoint


def _read(path: Path, name: str) -> Any:
    with path.open("rb") as file:
        head = file.read(2)
    if head != b"PK" and head[:1] != b"\x80":  # torch.save's zip archive, or its legacy pickle
        raise UserInputError(f"{name} is not a checkpoint (it is not a file written by torch.save); {WHERE}.")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "Weights only load failed" in str(error):
            raise UserInputError(
                f"checkpoint {name} holds Python objects that gem-lightning does not load (only tensors and plain "
                f"values are read, so that a file cannot run code): it was not written by gem-lightning. {WHERE}."
            ) from error
        raise UserInputError(_unreadable(path, name)) from error
    except (RuntimeError, EOFError, KeyError, ValueError, OSError, IndexError, TypeError) as error:
        raise UserInputError(_unreadable(path, name)) from error


def _unreadable(path: Path, name: str) -> str:
    return (
        f"checkpoint {name} is truncated or corrupted ({path.stat().st_size} bytes; an interrupted copy or "
        "download?): copy it again, or use another checkpoint."
    )


def _check_contents(checkpoint: Any, name: str) -> None:
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        what = "a bare state dict or other saved object" if isinstance(checkpoint, dict) else f"a saved {type(checkpoint).__name__}"
        raise UserInputError(f"{name} is not a Lightning checkpoint (no 'state_dict'; it holds {what}); {WHERE}.")
    weights = list(checkpoint["state_dict"])
    if not any(key.startswith("model.network.") for key in weights):
        shown = ", ".join(weights[:3]) or "no weights"
        raise UserInputError(
            f"checkpoint {name} is a Lightning checkpoint of another model, not of gem-lightning's classifier "
            f"(its weights are {shown}, ...); {WHERE}."
        )
    hparams = checkpoint.get("hyper_parameters") or {}
    missing = [key for key in REQUIRED_HPARAMS if hparams.get(key) is None]
    if missing:
        raise UserInputError(
            f"checkpoint {name} lacks the hyperparameters {', '.join(missing)} that this version of gem-lightning "
            "needs to rebuild the network (written by hand or by an older version?): train a new checkpoint with `fit`."
        )


def checkpoint_hparams(ckpt_path: str | Path | None) -> dict[str, Any]:
    """The model hyperparameters that rebuild a checkpoint for evaluation and prediction, in today's
    shape, or ``{}`` without one (checked first). Without distillation: a checkpoint predicts alone."""
    if not ckpt_path:
        return {}
    return {**upgrade_hparams(dict(load_checkpoint(ckpt_path).get("hyper_parameters") or {})), "distillation": None}


VGG_KEYS = ("channels", "pools", "convs_per_block", "batch_norm", "head", "hidden_units", "dropout")
DISTILLATION_KEYS = {"teacher": "teacher", "distill_weight": "weight", "distill_temperature": "temperature", "teacher_autocast": "autocast"}
FLAT_NETWORK_KEYS = ("arch", "weights", "backbone_kwargs", "frozen_stages", *VGG_KEYS)


def upgrade_hparams(hparams: dict[str, Any]) -> dict[str, Any]:
    """Hyperparameters of checkpoints written before ``model.network`` (flat: ``arch``, ``channels``,
    ``weights``, ``teacher``, ...) in today's shape; today's pass unchanged. The weights' keys did not
    change, so such checkpoints load and predict as they did."""
    if "network" in hparams:
        return hparams
    upgraded = {key: value for key, value in hparams.items() if key not in FLAT_NETWORK_KEYS and key not in DISTILLATION_KEYS}
    upgraded["network"] = _network_config(hparams)
    teacher = hparams.get("teacher")
    upgraded["distillation"] = (
        None if not teacher else {new: hparams[old] for old, new in DISTILLATION_KEYS.items() if hparams.get(old) is not None}
    )
    return upgraded


def _network_config(hparams: dict[str, Any]) -> dict[str, Any]:
    arch = hparams.get("arch", "vgg")
    if arch == "vgg":
        return {"class_path": "gem_lightning.models.vgg.VGGSpec", "init_args": {k: hparams[k] for k in VGG_KEYS if k in hparams}}
    if arch.startswith("timm/"):
        init_args = {
            "name": arch.removeprefix("timm/"),
            "weights": hparams.get("weights"),
            "kwargs": dict(hparams.get("backbone_kwargs") or {}),
            "frozen_stages": hparams.get("frozen_stages", 0),
        }
        return {"class_path": "gem_lightning.models.library.TimmSpec", "init_args": init_args}
    return {"class_path": "gem_lightning.models.library.TorchvisionSpec", "init_args": {"name": arch, "weights": hparams.get("weights")}}


def check_checkpoint_fits(model: nn.Module, ckpt_path: str | Path | None, *, fitting: bool) -> None:
    """Refuse a checkpoint whose weights the model cannot take, before any data is read.

    Lightning would load it only after scanning and decoding the whole dataset, then fail with
    every mismatched key. ``fit``'s resume keywords (``last``, ...) are left to Lightning.
    """
    if not ckpt_path or (fitting and str(ckpt_path) in RESUME_KEYWORDS):
        return
    saved = load_checkpoint(ckpt_path)["state_dict"]
    own = model.state_dict()
    strict = getattr(model, "strict_loading", True)
    missing = [key for key in own if key not in saved] if strict else []
    unexpected = [key for key in saved if key not in own] if strict else []
    reshaped = [key for key in own if key in saved and tuple(saved[key].shape) != tuple(own[key].shape)]
    if not (missing or unexpected or reshaped):
        return
    examples = [f"{key} is {list(saved[key].shape)} in the checkpoint but {list(own[key].shape)} here" for key in reshaped[:2]]
    examples += [f"{key} is missing from the checkpoint" for key in missing[:2]]
    examples += [f"{key} is not in this model" for key in unexpected[:2]]
    advice = (
        "To resume, give the same model settings as the run that wrote it (its config.yaml is in the run folder)."
        if fitting
        else "The checkpoint's own settings rebuild the network, so the file does not match them: was it edited, or "
        "written by another version of gem-lightning?"
    )
    raise UserInputError(
        f"checkpoint {str(ckpt_path)!r} does not fit the model: {len(missing) + len(unexpected) + len(reshaped)} "
        f"weights differ ({'; '.join(examples[:3])}). {advice}"
    )

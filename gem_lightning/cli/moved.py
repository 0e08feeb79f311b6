"""Settings and class paths that earlier versions took, refused in one line that names today's.

jsonargparse would answer ``--model.arch`` with "key not expected" and an old ``class_path`` with an
import error; a user who upgrades deserves the new name instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import yaml

from gem_lightning.errors import UserInputError

MOVED_CLASS_PATHS = {
    "gem_lightning.schedules.WarmupCosineLR": "gem_lightning.training.schedules.WarmupCosineLR",
    "gem_lightning.callbacks.finetuning.FreezeBackbone": "gem_lightning.training.callbacks.finetuning.FreezeBackbone",
}

_VGG = "model.network.init_args.{} (class_path gem_lightning.models.VGGSpec)"
_TIMM = "model.network.init_args.{} (class_path gem_lightning.models.TimmSpec)"
MOVED_MODEL_SETTINGS = {
    "arch": "model.network: class_path gem_lightning.models.TimmSpec (init_args.name: <timm model>), TorchvisionSpec or VGGSpec",
    "weights": "model.network.init_args.weights (TimmSpec or TorchvisionSpec)",
    "backbone_kwargs": _TIMM.format("kwargs"),
    "frozen_stages": _TIMM.format("frozen_stages"),
    **{key: _VGG.format(key) for key in ("channels", "pools", "convs_per_block", "batch_norm", "head", "hidden_units", "dropout")},
    "teacher": "model.distillation.teacher",
    "teacher_autocast": "model.distillation.autocast",
    "distill_weight": "model.distillation.weight",
    "distill_temperature": "model.distillation.temperature",
}


def check_moved_settings(argv: list[str]) -> None:
    """Refuse a model setting or class path of an earlier version, given on the command line or in a
    ``--config`` file, naming what replaced it (README's "Configs" section shows the new shape)."""
    for where, key in _model_keys(argv):
        if key in MOVED_MODEL_SETTINGS:
            raise UserInputError(f"{where}: model.{key} is now {MOVED_MODEL_SETTINGS[key]}; see configs/ for examples.")
    for where, value in _values(argv):
        if value in MOVED_CLASS_PATHS:
            raise UserInputError(f"{where}: {value} moved to {MOVED_CLASS_PATHS[value]}: update the class_path.")


def _config_files(argv: list[str]) -> Iterator[Path]:
    for index, arg in enumerate(argv):
        if arg in ("--config", "-c") and index + 1 < len(argv):
            yield Path(argv[index + 1]).expanduser()
        elif arg.startswith("--config="):
            yield Path(arg.partition("=")[2]).expanduser()


def _loaded_configs(argv: list[str]) -> Iterator[tuple[str, Any]]:
    for path in _config_files(argv):
        if path.is_file():
            yield f"config file {str(path)!r}", yaml.safe_load(path.read_text(encoding="utf-8"))


def _model_keys(argv: list[str]) -> Iterator[tuple[str, str]]:
    for arg in argv:
        if arg.startswith("--model."):
            yield "command line", arg.removeprefix("--model.").partition("=")[0].partition(".")[0]
    for where, config in _loaded_configs(argv):
        model = config.get("model") if isinstance(config, dict) else None
        for key in model if isinstance(model, dict) else ():
            yield where, key


def _values(argv: list[str]) -> Iterator[tuple[str, str]]:
    for arg in argv:
        yield "command line", arg.partition("=")[2] if arg.startswith("--") else arg
    for where, config in _loaded_configs(argv):
        yield from ((where, value) for value in _strings(config))


def _strings(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from _strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from _strings(value)

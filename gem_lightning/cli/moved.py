"""Settings and class paths that earlier versions took, refused in one line that names today's.

jsonargparse would answer ``--model.arch`` with "key not expected" and an old ``class_path`` with an
import error; a user who upgrades deserves the new name instead.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

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


def check_moved_settings(argv: list[str], configs: dict[str, Any]) -> None:
    """Refuse a model setting or class path of an earlier version, given on the command line or in a
    config file (``configs``: each ``--config`` as given -> its YAML), naming what replaced it."""
    for where, key in _model_keys(argv, configs):
        if key in MOVED_MODEL_SETTINGS:
            raise UserInputError(f"{where}: model.{key} is now {MOVED_MODEL_SETTINGS[key]}; see configs/ for examples.")
    for where, value in _values(argv, configs):
        if value in MOVED_CLASS_PATHS:
            raise UserInputError(f"{where}: {value} moved to {MOVED_CLASS_PATHS[value]}: update the class_path.")


def _model_keys(argv: list[str], configs: dict[str, Any]) -> Iterator[tuple[str, str]]:
    for arg in argv:
        if arg.startswith("--model."):
            yield "command line", arg.removeprefix("--model.").partition("=")[0].partition(".")[0]
    for given, config in configs.items():
        model = config.get("model") if isinstance(config, dict) else None
        for key in model if isinstance(model, dict) else ():
            yield f"config file {given!r}", key


def _values(argv: list[str], configs: dict[str, Any]) -> Iterator[tuple[str, str]]:
    for arg in argv:
        yield "command line", arg.partition("=")[2] if arg.startswith("--") else arg
    for given, config in configs.items():
        yield from ((f"config file {given!r}", value) for value in _strings(config))


def _strings(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from _strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from _strings(value)

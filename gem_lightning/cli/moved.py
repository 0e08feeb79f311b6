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

MOVED_DATA_SETTINGS = {
    **{key: f"data.loader.{key}" for key in ("num_workers", "pin_memory", "persistent_workers", "multiprocessing_context")},
    "cache_dir": "data.cache.dir",
    "cache_memory_gb": "data.cache.memory_gb",
}


def check_moved_settings(argv: list[str], configs: dict[str, Any]) -> None:
    """Refuse a model setting or class path of an earlier version, given on the command line or in a
    config file (``configs``: each ``--config`` as given -> its YAML), naming what replaced it."""
    for where, key, _ in _section_keys("model", argv, configs):
        if key in MOVED_MODEL_SETTINGS:
            raise UserInputError(f"{where}: model.{key} is now {MOVED_MODEL_SETTINGS[key]}; see configs/ for examples.")
    for where, key, value in _section_keys("data", argv, configs):
        if key in MOVED_DATA_SETTINGS:
            raise UserInputError(f"{where}: data.{key} is now {MOVED_DATA_SETTINGS[key]}; see configs/ for examples.")
        if key == "cache" and value in ("memory", "disk"):
            raise UserInputError(
                f"{where}: data.cache is now a group: data.cache.mode {value} (with data.cache.dir and data.cache.memory_gb)."
            )
    for where, value in _values(argv, configs):
        if value in MOVED_CLASS_PATHS:
            raise UserInputError(f"{where}: {value} moved to {MOVED_CLASS_PATHS[value]}: update the class_path.")


def _section_keys(section: str, argv: list[str], configs: dict[str, Any]) -> Iterator[tuple[str, str, Any]]:
    """``(where, key, value)`` for each ``section.key`` given on the command line or in a config file
    (value: what follows ``=`` or the next argument; for a nested key, its first level only)."""
    prefix = f"--{section}."
    for position, arg in enumerate(argv):
        if arg.startswith(prefix):
            path, equals, value = arg.removeprefix(prefix).partition("=")
            key, dot, _ = path.partition(".")
            following = argv[position + 1] if position + 1 < len(argv) else None
            yield "command line", key, None if dot else (value if equals else following)
    for given, config in configs.items():
        settings = config.get(section) if isinstance(config, dict) else None
        for key, value in settings.items() if isinstance(settings, dict) else ():
            yield f"config file {given!r}", key, value


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

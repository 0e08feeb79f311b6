"""The search space of a study, read from a YAML file: which ``fit`` settings vary, and over what.

One line a setting, the key as on the command line without ``--``, the value one distribution::

    model.optimizer.init_args.lr: {log_uniform: [1.0e-4, 1.0e-2]}
    model.optimizer.init_args.weight_decay: {uniform: [0.0, 0.1]}
    trainer.max_epochs: {int: [2, 6]}
    data.image_size: {choice: [128, 160, 224]}
    model.network.init_args.channels: {choice: [[8, 16], [16, 32]]}

Mistakes in the file (no setting, an unknown distribution, a range whose low end is not below its
high end) are one line naming the file and the key; whether the keys and values are ``fit``
settings is checked against the command line's own parser (:mod:`gem_lightning.tuning.trial_command`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from jsonargparse import Namespace

from gem_lightning.errors import UserInputError

EXAMPLE = "model.optimizer.init_args.lr: {log_uniform: [1.0e-4, 1.0e-2]}"
DISTRIBUTIONS = {
    "uniform": "{uniform: [low, high]}",
    "log_uniform": "{log_uniform: [low, high]} (low > 0)",
    "int": "{int: [low, high]}",
    "choice": "{choice: [a, b, ...]}",
}
SET_PER_TRIAL = ("trainer.default_root_dir", "checkpoint.dirpath", "trainer.logger", "trainer.devices", "trainer.num_nodes")
"""Settings ``tune`` gives every trial itself (its own folder, one device): not searchable."""
SCALARS = (type(None), bool, int, float, str)
"""What Optuna stores as a categorical choice as it is; other choices (lists) are stored as JSON text."""


@dataclass(frozen=True)
class Param:
    """One searched setting: ``key`` varies as ``kind`` says, between ``bounds`` or over ``choices``."""

    key: str
    kind: str
    bounds: tuple[float, float] = (0.0, 0.0)
    choices: tuple[Any, ...] = ()

    def suggest(self, trial: Any) -> Any:
        """The value ``trial`` (an ``optuna.Trial``) samples for this setting."""
        if self.kind == "choice":
            encoded = {_encode(choice): choice for choice in self.choices}
            return encoded[trial.suggest_categorical(self.key, list(encoded))]
        if self.kind == "int":
            return trial.suggest_int(self.key, int(self.bounds[0]), int(self.bounds[1]))
        return trial.suggest_float(self.key, *self.bounds, log=self.kind == "log_uniform")

    def decode(self, stored: Any) -> Any:
        """A value as Optuna stored it (``FrozenTrial.params``) -> the setting's value."""
        if self.kind == "choice":
            return {_encode(choice): choice for choice in self.choices}[stored]
        return int(stored) if self.kind == "int" else float(stored)

    def encode(self, value: Any) -> Any:
        """A setting's value as Optuna stores it, for ``Study.enqueue_trial``; ValueError when the space cannot hold it."""
        if self.kind == "choice" and _encode(value) in {_encode(choice) for choice in self.choices}:
            return _encode(value)
        numeric = self.kind != "choice" and not isinstance(value, bool) and isinstance(value, int | float)
        if numeric and self.bounds[0] <= value <= self.bounds[1] and (self.kind != "int" or float(value).is_integer()):
            return int(value) if self.kind == "int" else float(value)
        raise ValueError(f"{value!r} is outside {self.describe()[self.key]}")

    def extremes(self) -> list[Any]:
        """The values the parser must accept for every sample to be accepted: both ends, or every choice."""
        return list(self.choices) if self.kind == "choice" else [_number(self.kind, end) for end in self.bounds]

    def describe(self) -> dict[str, Any]:
        return {self.key: {self.kind: list(self.choices) if self.kind == "choice" else [_number(self.kind, end) for end in self.bounds]}}


@dataclass(frozen=True)
class SearchSpace:
    """The settings a study searches, in the file's order; ``source`` names the file in messages."""

    params: tuple[Param, ...]
    source: str

    def sample(self, trial: Any) -> dict[str, Any]:
        """Setting -> value, as ``trial`` samples them."""
        return {param.key: param.suggest(trial) for param in self.params}

    def decode(self, stored: dict[str, Any]) -> dict[str, Any]:
        """A finished trial's ``params`` -> setting -> value."""
        return {param.key: param.decode(stored[param.key]) for param in self.params if param.key in stored}

    def baseline(self, config: Namespace) -> dict[str, Any]:
        """The values ``config`` (the study's ``fit`` options, parsed) gives the searched settings, as Optuna
        stores them: the point the search has to beat. One line naming the first setting whose value the space
        cannot hold."""
        stored = {}
        for param in self.params:
            value = config.get(param.key)
            try:
                stored[param.key] = param.encode(value)
            except ValueError:
                raise UserInputError(
                    f"--tune.baseline: the config's {param.key} is {command_line_value(value)}, outside {self.source}'s "
                    f"{json.dumps(param.describe()[param.key])}: widen the space to hold it, or leave --tune.baseline out."
                ) from None
        return stored

    def fingerprint(self) -> str:
        """The space as canonical JSON: two studies search the same space when these are equal."""
        return json.dumps([param.describe() for param in self.params], sort_keys=True)

    def difference(self, fingerprint: str) -> str:
        """What differs between this space and the one of ``fingerprint``, in a few words."""
        theirs = {next(iter(item)): item for item in json.loads(fingerprint)}
        ours = {param.key: json.loads(json.dumps(param.describe())) for param in self.params}
        for key in sorted(set(theirs) | set(ours)):
            if key not in theirs:
                return f"it does not search {key}"
            if key not in ours:
                return f"it also searches {key}"
            if theirs[key] != ours[key]:
                return f"{key} there is {json.dumps(theirs[key][key])}, here {json.dumps(ours[key][key])}"
        return "the same settings in another order"


def command_line_value(value: Any) -> str:
    """A setting's value as command-line text: strings as they are, the rest as JSON (which YAML reads)."""
    return value if isinstance(value, str) else json.dumps(value)


def command_line_options(values: dict[str, Any]) -> list[str]:
    """Setting -> value as ``fit`` options: ``["--model.optimizer.init_args.lr", "0.01", ...]``."""
    return [item for key, value in values.items() for item in (f"--{key}", command_line_value(value))]


def nested(values: dict[str, Any]) -> dict[str, Any]:
    """``{"model.optimizer.init_args.lr": 0.01}`` -> ``{"model": {"optimizer": {"init_args": {"lr": 0.01}}}}``: a config."""
    config: dict[str, Any] = {}
    for key, value in values.items():
        *parents, last = key.split(".")
        node = config
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return config


def read_space(path: Path) -> SearchSpace:
    """The search space in the YAML file ``path``; one line naming the file and key for any mistake."""
    where = f"--tune.space {str(path)!r}"
    if not path.is_file():
        raise UserInputError(f"{where}: no such file.")
    try:
        content = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise UserInputError(f"{where} is not valid YAML: {' '.join(str(error).split())}") from error
    if not content:
        raise UserInputError(f"{where} is empty: name at least one setting to search, e.g. `{EXAMPLE}`.")
    if not isinstance(content, dict):
        raise UserInputError(f"{where} must map settings to distributions, e.g. `{EXAMPLE}`; it holds a {type(content).__name__}.")
    return SearchSpace(tuple(_param(f"{path}: ", str(key).lstrip("-"), value) for key, value in content.items()), str(path))


def _param(where: str, key: str, value: Any) -> Param:
    where += key
    if key.startswith(SET_PER_TRIAL):
        raise UserInputError(f"{where}: tune sets this for every trial (its own folder, one device); remove it from the space.")
    kinds = ", ".join(DISTRIBUTIONS.values())
    if not isinstance(value, dict) or len(value) != 1 or next(iter(value)) not in DISTRIBUTIONS:
        raise UserInputError(f"{where}: expected one of {kinds}; got {value!r}.")
    kind, given = next(iter(value.items()))
    if kind == "choice":
        if not isinstance(given, list) or not given:
            raise UserInputError(f"{where}: choice needs a non-empty list, e.g. {{choice: [128, 160]}}; got {given!r}.")
        return Param(key, kind, choices=tuple(given))
    if not isinstance(given, list) or len(given) != 2:
        raise UserInputError(f"{where}: {kind} needs [low, high]; got {given!r}.")
    low, high = (_bound(where, kind, end) for end in given)
    if low >= high:
        raise UserInputError(f"{where}: the range [{given[0]}, {given[1]}] is empty or reversed: low must be below high.")
    if kind == "log_uniform" and low <= 0:
        raise UserInputError(f"{where}: log_uniform needs low > 0 (a logarithmic scale); got {given[0]}.")
    return Param(key, kind, bounds=(low, high))


def _bound(where: str, kind: str, end: Any) -> float:
    """One end of a range as a number (PyYAML reads ``1e-4`` as text: YAML 1.1 floats need a dot)."""
    if kind == "int":
        if isinstance(end, bool) or not isinstance(end, int):
            raise UserInputError(f"{where}: int needs two whole numbers; got {end!r}.")
        return float(end)
    try:
        number = float(end) if not isinstance(end, bool) else math.nan
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number):
        raise UserInputError(f"{where}: {kind} needs two finite numbers; got {end!r}.")
    return number


def _number(kind: str, end: float) -> int | float:
    return int(end) if kind == "int" else end


def _encode(choice: Any) -> Any:
    return choice if isinstance(choice, SCALARS) else json.dumps(choice)

"""A trial's ``fit`` command line: the study's options, the sampled settings, and the trial's own folder.

Before the first trial, :func:`check_space` takes the study's ``fit`` options as the command line's
own parser read them (nothing built) and has it parse every end of every range and every choice of the
space: a key ``fit`` does not have, or a value it would refuse, is one line naming the space file
and the key, before any training, instead of a failure in every trial.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jsonargparse import ArgumentError, ArgumentParser, Namespace

from gem_lightning.errors import UserInputError
from gem_lightning.tuning.space import SearchSpace, command_line_options, command_line_value


@dataclass(frozen=True)
class TrialCommand:
    """Builds each trial's ``fit`` arguments from the study's ``fit_args`` and its sampled settings."""

    fit_args: tuple[str, ...]
    logger_save_dir: bool
    """Whether the configured logger has a ``save_dir`` to point at the trial's folder."""

    def args(self, values: dict[str, Any], folder: Path) -> list[str]:
        """``fit`` with the study's options, then the sampled ``values``, then the trial's own options
        (:meth:`folder_options`): later options win, so the samples override the configs."""
        return ["fit", *self.fit_args, *command_line_options(values), *self.folder_options(folder)]

    def folder_options(self, folder: Path) -> list[str]:
        """The trial's own folder for everything it writes, and one device: trials run side by side in
        workers, never one across several processes."""
        options = ["--trainer.default_root_dir", str(folder), "--checkpoint.dirpath", str(folder / "checkpoints")]
        options += ["--trainer.devices", "1", "--trainer.num_nodes", "1"]
        if self.logger_save_dir:
            options += ["--trainer.logger.init_args.save_dir", str(folder)]
        return options


def check_space(space: SearchSpace, fit_args: list[str], config: Namespace, parser: ArgumentParser) -> TrialCommand:
    """Check ``space`` against ``fit``'s ``parser``, which read the study's ``fit_args`` into ``config``
    (``gem_lightning.cli.app.parse_fit_options``); the trials' command builder."""
    exits, parser.exit_on_error = parser.exit_on_error, False  # a refused value raises ArgumentError instead of exiting
    try:
        for param in space.params:
            if param.key not in config:
                raise UserInputError(f"{space.source}: {param.key} is not a `fit` setting{_close_matches(param.key, config)}.")
            for value in param.extremes():
                try:
                    parser.parse_args([*fit_args, f"--{param.key}", command_line_value(value)])
                except ArgumentError as error:
                    reason = " ".join(str(error).split())
                    raise UserInputError(f"{space.source}: {param.key}: `fit` refuses {value!r}: {reason}") from None
    finally:
        parser.exit_on_error = exits
    logger = config.get("trainer.logger")
    return TrialCommand(tuple(fit_args), isinstance(logger, Namespace) and "init_args.save_dir" in logger)


def _close_matches(key: str, config: Namespace) -> str:
    matches = difflib.get_close_matches(key, config.keys(), n=1, cutoff=0.8)
    return f" (did you mean {matches[0]}?)" if matches else ""

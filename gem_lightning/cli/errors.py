"""How the command line ends on a mistake: one ``error: ...`` line on stderr, exit status 2.

Every mistake in what the user gave (files, folders, settings, the machine's hardware, a full
disk) reaches :func:`report_user_errors` as a :class:`~gem_lightning.errors.UserInputError` or as
one of the few library exceptions that only ever mean a bad setting; it prints the message and
exits with status 2, without a traceback (``GEM_LIGHTNING_DEBUG=1`` prints it as well).
jsonargparse's own errors (unknown options, wrong types, a missing config file, YAML syntax) print
one line too, with :class:`ConciseErrorParser`, instead of the whole usage text. Anything else is a
bug and keeps its traceback.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch import Trainer
from lightning.pytorch.accelerators import CPUAccelerator
from lightning.pytorch.cli import LightningArgumentParser
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.rank_zero import rank_zero_warn

from gem_lightning.cli.precision import cpu_bf16_native
from gem_lightning.errors import UserInputError, explained
from gem_lightning.resilience import interrupted_by_ctrl_c

DEBUG_VARIABLE = "GEM_LIGHTNING_DEBUG"
USER_ERROR_STATUS = 2
CTRL_C_STATUS = 130
"""What a shell reports for a command stopped by SIGINT (128 + 2)."""


class ConciseErrorParser(LightningArgumentParser):
    """LightningCLI's parser, whose errors are the ``tip:`` and ``error:`` lines without the
    hundred-line usage text that buries them."""

    def print_usage(self, file=None) -> None:  # argparse calls it only to preface an error
        pass


def debugging() -> bool:
    return os.environ.get(DEBUG_VARIABLE, "") not in ("", "0")


@contextmanager
def report_user_errors() -> Iterator[None]:
    """Turn the user's mistakes raised inside into ``error: <message>`` and exit status 2.

    A ``fit`` stopped by Ctrl-C says where its checkpoint went and exits with status 130.
    """
    try:
        yield
    except (UserInputError, MisconfigurationException) as error:
        _exit_with(error)
    except SIGTERMException:
        stopped, saved = interrupted_by_ctrl_c()
        if not stopped:
            raise  # SIGTERM: Lightning's clean stop (status 0), the checkpoint already saved and logged
        if saved:
            print(
                f"Interrupted (Ctrl-C): saved a resumable checkpoint to {saved!r}; resume with the same "
                f"command plus --ckpt_path {saved!r}.",
                file=sys.stderr,
            )
        else:
            print("Interrupted (Ctrl-C) before the first training step; nothing to save.", file=sys.stderr)
        raise SystemExit(CTRL_C_STATUS) from None
    except Exception as error:
        user_error = explained(error)  # e.g. the object store of a stream went away mid-epoch
        if user_error is None:
            raise
        _exit_with(user_error)


def _exit_with(error: BaseException) -> None:
    if debugging():
        traceback.print_exc()
    print(f"error: {error}", file=sys.stderr)
    raise SystemExit(USER_ERROR_STATUS) from None


def check_config_files(argv: list[str]) -> dict[str, Any]:
    """The ``--config`` files given, read: each file as given -> its YAML. Refuses one that is not
    valid YAML, naming the file, line and column.

    jsonargparse reports the syntax error with the position in ``"<unicode string>"`` and no file
    name, which leaves the user guessing when several configs are stacked. Missing files are left to
    jsonargparse, which names them.
    """
    configs = {}
    for index, arg in enumerate(argv):
        if arg in ("--config", "-c") and index + 1 < len(argv):
            given = argv[index + 1]
        elif arg.startswith("--config="):
            given = arg.partition("=")[2]
        else:
            continue
        path = Path(given).expanduser()
        if path.is_file():
            configs[given] = _read_yaml(path, given)
    return configs


def _read_yaml(path: Path, given: str) -> Any:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as error:
        raise UserInputError(f"config file {given!r} is not a text (UTF-8 YAML) file.") from error
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or str(error)
        raise UserInputError(f"config file {given!r} is not valid YAML{where}: {problem}.") from error


def check_trainer_runs_here(trainer: Trainer, precision: str | int | None) -> Trainer:
    """Refuse ``precision`` (the one asked for) where the trainer runs on the CPU: ``16-mixed`` is
    for CUDA GPUs. Lightning would swap in ``bf16-mixed`` with a warning lost in the log: other
    numerics than asked for, and on CPUs without bf16 units slower than ``32-true``. Warn when
    ``bf16`` is asked for on a CPU without bf16 instructions: it runs, emulated, several times slower.
    """
    on_cpu = isinstance(trainer.accelerator, CPUAccelerator)
    if on_cpu and str(precision) in ("16-mixed", "16"):
        raise UserInputError(
            f"trainer.precision {str(precision)!r} needs a CUDA GPU, and this run is on the CPU"
            f"{' (no GPU found)' if not gpu_available() else ''}: use --trainer.precision auto (bf16-mixed on CPUs with "
            "AMX/AVX-512-bf16, else 32-true), or --trainer.accelerator gpu on a machine with one."
        )
    if on_cpu and str(precision).startswith("bf16") and not cpu_has_bf16():
        rank_zero_warn(
            f"trainer.precision {str(precision)!r} on a CPU without AVX-512-bf16 or AMX: bf16 is emulated "
            "here and about 10x slower than --trainer.precision 32-true."
        )
    return trainer


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (:func:`~gem_lightning.cli.precision.cpu_bf16_native`);
    True where torch cannot tell: the answer only decides a warning, and a wrong one would be worse than none."""
    return cpu_bf16_native() is not False


def gpu_available() -> bool:
    import torch

    return torch.cuda.is_available()


def hardware_hint(error: MisconfigurationException) -> UserInputError:
    """Lightning's refusal of a device setting, with what to do on this machine."""
    message = str(error)
    if not gpu_available() and any(word in message.lower() for word in ("gpu", "cuda")):
        message += " This machine has no usable CUDA GPU: use --trainer.accelerator cpu (or auto)."
    return UserInputError(f"trainer settings: {message}")

"""Every private Lightning name gem-lightning relies on, in one place, so that an upgrade shows what broke.

Some of what gem-lightning needs sits behind Lightning's private names: the trainer's signal
connector (to run Lightning's signal handlers only in the trainer's own process, and to stop the
loops as its SIGTERM handler does), ``ModelCheckpoint``'s saving steps (to refresh ``last.ckpt`` at
every epoch), three ``LightningCLI`` methods, and the fit loop's epoch counter (the epoch the loop is
about to run, which the DDP training sampler shuffles for). Private names change without deprecation, so:

* this module is the only one that imports or reads them; the rest of the package uses the aliases
  and functions below, or calls a private method of a Lightning class it subclasses;
* :data:`PRIVATE_NAMES` lists every private Lightning class, method and attribute that the package
  imports, overrides, calls or reads, and :data:`PARAMETERS` the parameters it passes to or takes
  in its overrides of the listed methods.

``tests/test_compat.py`` checks that each listed name exists in the installed Lightning with those
parameters, that no other module touches a private Lightning name, and that every private method the
package overrides or inherits is listed. ``pyproject.toml`` pins ``lightning<2.7``: before lifting
the pin, re-read each listed name in the new release's source and check that it still means what the
comment beside it says.
"""

from __future__ import annotations

from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.trainer.connectors.signal_connector import _HandlersCompose, _SignalConnector

SignalConnector = _SignalConnector
"""The trainer's signal connector: installs Lightning's SIGTERM and SLURM-requeue handlers for a run
(each signal's handlers in one :data:`HandlersCompose`) and restores the handlers it found at teardown."""

HandlersCompose = _HandlersCompose
"""The handler :data:`SignalConnector` installs for one signal: Lightning's handlers, then the one it found."""

PRIVATE_NAMES: tuple[str, ...] = (
    # The signal connector (gem_lightning.resilience.signal_connector, .install, .preemption).
    "lightning.pytorch.trainer.connectors.signal_connector._SignalConnector",
    # staticmethod (signum, handlers): every handler the connector installs or restores goes through it.
    "lightning.pytorch.trainer.connectors.signal_connector._SignalConnector._register_signal",
    # The flag the loops check after each training batch and before each evaluation batch
    # (``trainer.received_sigterm``): set, they raise SIGTERMException.
    "lightning.pytorch.trainer.connectors.signal_connector._SignalConnector.received_sigterm",
    "lightning.pytorch.trainer.connectors.signal_connector._HandlersCompose",
    # The trainer's connector, created in Trainer.__init__ and used by every fit.
    "lightning.pytorch.Trainer._signal_connector",
    # ModelCheckpoint's saving steps (gem_lightning.resilience.last_checkpoint, .preemption).
    "lightning.pytorch.callbacks.ModelCheckpoint._should_save_on_train_epoch_end",
    # True when not fitting, in the sanity check, or when a checkpoint was saved at this global step.
    "lightning.pytorch.callbacks.ModelCheckpoint._should_skip_saving_checkpoint",
    # (trainer, monitor_candidates): writes last.ckpt when save_last is set.
    "lightning.pytorch.callbacks.ModelCheckpoint._save_last_checkpoint",
    "lightning.pytorch.callbacks.ModelCheckpoint._monitor_candidates",
    "lightning.pytorch.callbacks.ModelCheckpoint._every_n_epochs",
    # The global step of the callback's latest save (top-k or last).
    "lightning.pytorch.callbacks.ModelCheckpoint._last_global_step_saved",
    # LightningCLI (gem_lightning.cli.app): overridden to stop Lightning copying checkpoint
    # hyperparameters into the model config, and its config lookup helper.
    "lightning.pytorch.cli.LightningCLI._parse_ckpt_path",
    "lightning.pytorch.cli.LightningCLI._get",
    # The fit loop's epoch counters (``trainer.fit_loop``, a _FitLoop), for the DDP training sampler
    # (gem_lightning.data.samplers): ``current.processed`` is the epoch the loop is about to run, the
    # value FitLoop.on_advance_start passes to ``set_epoch``. ``trainer.current_epoch`` (``completed``)
    # is one less when the first iterator is made after resuming from a checkpoint saved at an epoch's
    # end, because the loop only catches ``completed`` up in on_run_start, after setup_data.
    "lightning.pytorch.loops.fit_loop._FitLoop.epoch_progress",
    "lightning.pytorch.loops.progress._Progress.current",
    "lightning.pytorch.loops.progress._ProcessedTracker.processed",
    # (subcommand): runs trainer.<subcommand>; overridden to build a subcommand's objects without running it (calibrate).
    "lightning.pytorch.cli.LightningCLI._run_subcommand",
)

PARAMETERS: dict[str, tuple[str, ...]] = {
    "lightning.pytorch.trainer.connectors.signal_connector._SignalConnector._register_signal": ("signum", "handlers"),
    "lightning.pytorch.callbacks.ModelCheckpoint._should_save_on_train_epoch_end": ("trainer",),
    "lightning.pytorch.callbacks.ModelCheckpoint._should_skip_saving_checkpoint": ("trainer",),
    "lightning.pytorch.callbacks.ModelCheckpoint._save_last_checkpoint": ("trainer", "monitor_candidates"),
    "lightning.pytorch.callbacks.ModelCheckpoint._monitor_candidates": ("trainer",),
    "lightning.pytorch.cli.LightningCLI._parse_ckpt_path": (),
    "lightning.pytorch.cli.LightningCLI._get": ("config", "key", "default"),
    "lightning.pytorch.cli.LightningCLI._run_subcommand": ("subcommand",),
}
"""The parameters, in order and without ``self``, that the package passes to (or, overriding, takes
in) each listed method; any further parameter of Lightning's must have a default."""


def replace_default_signal_connector(trainer: Trainer, connector_class: type[SignalConnector]) -> None:
    """Give ``trainer`` a ``connector_class`` connector in place of Lightning's default one.

    A connector of any other class (installed before, by this function or by a user) is kept, so
    calling it twice changes nothing.
    """
    if type(trainer._signal_connector) is SignalConnector:
        trainer._signal_connector = connector_class(trainer)


def stop_as_on_sigterm(trainer: Trainer) -> None:
    """Stop the loops as Lightning's SIGTERM handler does: ``SIGTERMException`` after the current
    training batch, or before the next evaluation batch, on this process."""
    trainer._signal_connector.received_sigterm = True


def last_global_step_saved(callback: ModelCheckpoint) -> int:
    """The global step at which ``callback`` last saved a checkpoint (0 before its first save)."""
    return callback._last_global_step_saved


def fit_epoch_about_to_run(trainer: Trainer) -> int:
    """The epoch the fit loop is about to run (or runs): what Lightning passes to the samplers' ``set_epoch``.

    Unlike ``trainer.current_epoch``, already right while the loop makes its first iterator, before
    its epoch starts: on a run resumed from a checkpoint saved at the end of epoch ``n``, ``n + 1``
    where ``current_epoch`` still says ``n``.
    """
    return trainer.fit_loop.epoch_progress.current.processed

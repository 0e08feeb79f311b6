"""Lightning's signal handlers, run only by the trainer's own process: :class:`OwnProcessSignalConnector`.

Lightning installs its SIGTERM and SLURM-requeue handlers through the trainer's signal connector; a
loader worker forked from the trainer's process inherits them and would save checkpoints, forward
signals and run collectives on the trainer's behalf (:mod:`gem_lightning.resilience.signals` says
why that hangs or breaks a job).
"""

from __future__ import annotations

from typing import Any

from typing_extensions import override

from gem_lightning.compat.lightning import HandlersCompose, SignalConnector
from gem_lightning.resilience.signals import OwnProcessHandler


class OwnProcessSignalConnector(SignalConnector):
    """Lightning's signal connector whose handlers run only in the process that installed them.

    Lightning's handlers (each signal's in a ``HandlersCompose``) are wrapped in
    :class:`~gem_lightning.resilience.signals.OwnProcessHandler`, so they do nothing in a forked
    child. The handlers it restores at teardown are left as they were.
    """

    @staticmethod
    @override
    def _register_signal(signum: int, handlers: Any) -> None:
        if isinstance(handlers, HandlersCompose):
            handlers = OwnProcessHandler(handlers)
        SignalConnector._register_signal(signum, handlers)

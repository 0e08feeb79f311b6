"""Every private LitServe name gem-lightning relies on, in one place, so that an upgrade shows what broke.

``serve`` supervises LitServe's model workers itself (:mod:`gem_lightning.serving.supervision` says
why LitServe's own monitor will not do): it turns LitServe's monitor off, and stops the server when
it gives up. LitServe has a public way for neither (its ``/shutdown`` route is an HTTP endpoint behind
an API key, not a call), so both go through private attributes of ``LitServer``. Private names
change without deprecation, so:

* this module is the only one that reads or writes them; the rest of the package uses the functions below;
* :data:`PRIVATE_NAMES` lists every private LitServe name that the package reads or writes.

``tests/test_compat.py`` checks that each listed name exists in the installed LitServe, and that no
other module touches a private LitServe name. ``pyproject.toml`` pins ``litserve<0.3``: before
lifting the pin, re-read each listed name in the new release's source and check that it still means
what the comment beside it says.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from litserve import LitServer

PRIVATE_NAMES: tuple[str, ...] = (
    # True from LitServer.__init__: ``run`` starts LitServe's worker monitor thread (_start_worker_monitoring)
    # only while it is set.
    "litserve.LitServer._monitor_workers",
    # The manager Event that ``run`` waits on (made in _init_manager, None before ``run``): once set,
    # ``run`` shuts the HTTP servers, the workers and the manager down and returns.
    "litserve.LitServer._shutdown_event",
)

PARAMETERS: dict[str, tuple[str, ...]] = {}
"""No listed name is a function."""


def disable_worker_monitor(server: LitServer) -> None:
    """Keep ``server.run`` from starting LitServe's own worker monitor; call before ``run``."""
    server._monitor_workers = False


def shutdown_requested(server: LitServer) -> bool:
    """Whether ``server`` has been asked to shut down (by :func:`request_shutdown` or LitServe itself);
    valid once ``server.run`` has started its workers."""
    return server._shutdown_event.is_set()


def request_shutdown(server: LitServer) -> None:
    """Make ``server.run`` shut the HTTP servers and workers down and return, as a ``/shutdown`` request does."""
    server._shutdown_event.set()

"""Every private torch name gem-lightning relies on, in one place, so that an upgrade shows what broke.

:class:`~gem_lightning.data.loader.SignalSafeDataLoader` starts its workers with the job's signals
blocked and its own ``worker_init_fn`` in front of the one given; the only place a ``DataLoader`` can
do that, at the moment the workers start, is the private method that makes the iterator. The public
``__iter__`` will not do: LitData's ``StreamingDataLoader.__iter__`` is a generator, so its workers
start at the first batch, after a wrapper around ``__iter__`` has returned. Private names change
without deprecation, so:

* :data:`PRIVATE_NAMES` lists every private torch name the package overrides (no module imports or
  reads one; a subclass may override a listed method);
* :data:`PARAMETERS` lists the parameters the overrides take.

``tests/test_compat.py`` checks that each listed name exists in the installed torch with those
parameters, that no other module touches a private torch name, and that every private method the
package overrides is listed. ``pyproject.toml`` pins ``torch<2.15``: before lifting the pin, re-read
each listed name in the new release's source and check that it still means what the comment beside
it says.
"""

from __future__ import annotations

PRIVATE_NAMES: tuple[str, ...] = (
    # Makes the loader's iterator and so starts its workers (each epoch, or once with persistent
    # workers): DataLoader.__iter__ calls it; SignalSafeDataLoader (gem_lightning.data.loader) overrides it.
    "torch.utils.data.DataLoader._get_iterator",
)

PARAMETERS: dict[str, tuple[str, ...]] = {
    "torch.utils.data.DataLoader._get_iterator": (),
}
"""The parameters, in order and without ``self``, that the package's overrides of the listed methods take."""

"""Every private LitData name gem-lightning relies on, in one place, so that an upgrade shows what broke.

LitData builds the obstore ``S3Store``, through which its chunk uploads and downloads go, in a private
function that leaves out ``allow_http``, and has no setting for it: :mod:`gem_lightning.data.object_store`
wraps that function so that plain ``http://`` endpoints (MinIO, SeaweedFS) work, in every process that
unpickles the storage options. And :class:`~gem_lightning.data.loader.SignalSafeStreamingDataLoader`
starts LitData's loader workers with signals blocked by wrapping the private method that starts them.
Private names change without deprecation, so:

* this module is the only one that reads or replaces them; the rest of the package uses the
  functions below, or overrides a private method of a LitData class it subclasses;
* :data:`PRIVATE_NAMES` lists every private LitData name that the package calls, replaces or
  overrides, and :data:`PARAMETERS` the parameters it passes or takes.

``tests/test_compat.py`` checks that each listed name exists in the installed LitData with those
parameters, and that no other module touches a private LitData name. ``pyproject.toml`` pins
``litdata<0.3``: before lifting the pin, re-read each listed name in the new release's source and
check that it still means what the comment beside it says.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

OBSTORE_S3_STORE_BUILDER = "litdata.streaming.downloader._build_obstore_s3_store"
"""The function that builds LitData's obstore ``S3Store`` for a bucket from its boto3 client."""

PRIVATE_NAMES: tuple[str, ...] = (
    # (bucket, s3_client) -> obstore S3Store, called by name whenever LitData builds a store: writers'
    # chunk uploads (optimize's workers, index.json) and readers' chunk downloads. Replaced by a wrapper
    # that adds ``allow_http`` for http:// endpoints (gem_lightning.data.object_store).
    OBSTORE_S3_STORE_BUILDER,
    # Makes StreamingDataLoader's iterator and starts its workers: reached through super() from
    # SignalSafeDataLoader._get_iterator, which wraps it for SignalSafeStreamingDataLoader (gem_lightning.data.loader).
    "litdata.StreamingDataLoader._get_iterator",
)

PARAMETERS: dict[str, tuple[str, ...]] = {
    OBSTORE_S3_STORE_BUILDER: ("bucket", "s3_client"),
    "litdata.StreamingDataLoader._get_iterator": (),
}
"""The parameters, in order and without ``self``, that the package passes to (or, overriding, takes
in) each listed function; any further parameter of LitData's must have a default."""


def obstore_s3_store_builder() -> Callable[..., Any] | None:
    """The function LitData builds its obstore ``S3Store`` with in this process, ``(bucket, s3_client)
    -> S3Store`` (LitData's own, or a wrapper installed by :func:`replace_obstore_s3_store_builder`);
    None when the installed LitData has no such function."""
    from litdata.streaming import downloader

    return getattr(downloader, "_build_obstore_s3_store", None)


def replace_obstore_s3_store_builder(builder: Callable[..., Any]) -> None:
    """Make LitData build its obstore ``S3Store`` with ``builder`` in this process."""
    from litdata.streaming import downloader

    downloader._build_obstore_s3_store = builder

"""LitData streams on S3 and S3-compatible stores (AWS S3, MinIO, SeaweedFS): options, one fix, clear errors.

How LitData 0.2.76 reaches S3 (read from its source)
-----------------------------------------------------
* Both ``litdata.optimize(output_dir="s3://...")`` and ``StreamingDataset("s3://...")`` take
  ``storage_options``; LitData passes them unchanged as keyword arguments to
  ``boto3.Session().client("s3", **storage_options)`` (``litdata/streaming/client.py``,
  ``S3Client._create_client``). So the keys are boto3's: ``endpoint_url``, ``aws_access_key_id``,
  ``aws_secret_access_key``, ``aws_session_token``, ``region_name``, ``config``. Without them boto3's
  own chain applies: ``AWS_ENDPOINT_URL`` / ``AWS_ENDPOINT_URL_S3``, ``AWS_ACCESS_KEY_ID``,
  ``AWS_SECRET_ACCESS_KEY``, ``AWS_REGION``, ``AWS_PROFILE``, instance roles.
* boto3 lists, reads ``index.json`` and does the writer's existence checks. Chunk uploads (writer,
  in its spawned workers and in the parent for ``index.json``) and chunk downloads (reader) go
  through **obstore**, a hard dependency of LitData, whose ``S3Store`` LitData builds from that
  boto3 client (endpoint, region, a credential callback) in
  ``litdata.streaming.downloader._build_obstore_s3_store``. s5cmd is not used by this version.
* LitData's default boto3 config retries 1000 times in adaptive mode: with the store down, a read
  waits for hours. :func:`storage_options` passes a config with a few retries and short timeouts.

The one fix: plain ``http://`` endpoints
----------------------------------------
``_build_obstore_s3_store`` passes ``client_options`` without ``allow_http``, and obstore then refuses
any ``http://`` endpoint at the first request: ``GenericError ... HTTP error: builder error``
(reqwest's ``BadScheme``). ``AWS_ALLOW_HTTP=true`` does not help, because explicit
``client_options`` replace the ones obstore reads from the environment, and LitData has no option
for them (no ``allow_http``/``client_options`` anywhere in its source). So
:func:`accept_plain_http_endpoints` wraps exactly that one function: LitData still builds the store;
when the endpoint is ``http://`` it is rebuilt from the same config, credential callback and client
options plus ``allow_http``. HTTPS endpoints (AWS S3 itself) get LitData's store untouched. If
LitData renames or re-signs the function, the wrapper refuses to install with a message that says so.

Why not the alternatives: serving TLS from the test store would only hide the bug from the tests,
while real MinIO and SeaweedFS deployments on a private network commonly run plain HTTP; and no
LitData release sets ``allow_http``, so there is no version to pin.

LitData's ``optimize`` starts its workers with ``spawn``, so a patch made in the parent is not in
them. The wrapper travels with the options instead: :func:`storage_options` puts a
:class:`LitDataS3Config` (a botocore ``Config``) in them, and unpickling it in a worker installs the
wrapper there before that worker builds a store. Reader workers (fork or spawn) get it the same way.

Upstream: https://github.com/Lightning-AI/litData/blob/main/src/litdata/streaming/downloader.py
(``_build_obstore_s3_store``).
"""

from __future__ import annotations

import inspect
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from botocore.config import Config

S3_SCHEME = "s3"
PATCHED_FUNCTION = "litdata.streaming.downloader._build_obstore_s3_store"
"""The one LitData function :func:`accept_plain_http_endpoints` wraps."""
_EXPECTED_PARAMETERS = ["bucket", "s3_client"]
_install_lock = threading.Lock()


def is_s3_url(location: str | os.PathLike) -> bool:
    """Whether ``location`` is an ``s3://bucket/prefix`` URL (anything else is a local path)."""
    return urlparse(str(location)).scheme == S3_SCHEME


def split_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` -> ``("bucket", "some/prefix")``."""
    parsed = urlparse(url)
    return parsed.netloc, parsed.path.lstrip("/")


@dataclass(frozen=True)
class S3Settings:
    """Where the store is and how to sign in; ``None`` leaves a value to boto3 (environment, profile, role).

    For AWS S3 leave everything ``None`` and use the usual AWS variables or profile. For MinIO or
    SeaweedFS set ``endpoint_url`` (or ``AWS_ENDPOINT_URL``) and the keys.
    """

    endpoint_url: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = None
    session_token: str | None = None
    region: str | None = None
    max_attempts: int = 3
    """Tries per boto3 request (LitData's own default is 1000, which is hours with the store down)."""
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 60.0

    def effective_endpoint(self, environ: Mapping[str, str] = os.environ) -> str | None:
        """The endpoint boto3 will use: this one, else ``AWS_ENDPOINT_URL_S3``/``AWS_ENDPOINT_URL``; None is AWS."""
        return self.endpoint_url or environ.get("AWS_ENDPOINT_URL_S3") or environ.get("AWS_ENDPOINT_URL") or None


class LitDataS3Config(Config):
    """A botocore ``Config`` that also installs :func:`accept_plain_http_endpoints` where it is unpickled.

    LitData pickles ``storage_options`` into its spawned optimize workers and into DataLoader workers;
    this is what carries the ``http://`` fix to them. Everything else is plain botocore.
    """

    def __reduce__(self) -> tuple:
        return (_unpickle_config, (self._user_provided_options,))


def _unpickle_config(options: dict[str, Any]) -> LitDataS3Config:
    accept_plain_http_endpoints()
    return LitDataS3Config(**options)


def client_config(settings: S3Settings) -> LitDataS3Config:
    """Few retries, short timeouts, and path-style addressing for custom endpoints (MinIO needs it)."""
    options: dict[str, Any] = {
        "retries": {"max_attempts": settings.max_attempts, "mode": "standard"},
        "connect_timeout": settings.connect_timeout_s,
        "read_timeout": settings.read_timeout_s,
    }
    if settings.effective_endpoint():
        options["s3"] = {"addressing_style": "path"}
    return LitDataS3Config(**options)


def storage_options(location: str | os.PathLike, settings: S3Settings | None = None) -> dict[str, Any]:
    """LitData's ``storage_options`` for ``location``: ``{}`` for a local path; boto3 client options for ``s3://``.

    Pass the result to both ``litdata.optimize(..., storage_options=...)`` and
    ``StreamingDataset(..., storage_options=...)``. Also makes LitData accept ``http://`` endpoints in
    this process (and, through the config, in LitData's workers).
    """
    if not is_s3_url(location):
        return {}
    settings = settings or S3Settings()
    accept_plain_http_endpoints()
    explicit = {
        "endpoint_url": settings.endpoint_url,
        "aws_access_key_id": settings.access_key_id,
        "aws_secret_access_key": settings.secret_access_key,
        "aws_session_token": settings.session_token,
        "region_name": settings.region,
    }
    return {"config": client_config(settings), **{key: value for key, value in explicit.items() if value is not None}}


def accept_plain_http_endpoints() -> None:
    """Make LitData's obstore ``S3Store`` accept ``http://`` endpoints in this process (idempotent).

    Raises:
        RuntimeError: LitData no longer has ``_build_obstore_s3_store(bucket, s3_client)``; this
            shim must be revisited for the installed LitData version.
    """
    from litdata.streaming import downloader

    with _install_lock:
        current = getattr(downloader, "_build_obstore_s3_store", None)
        if getattr(current, "_allows_plain_http", False):
            return
        if current is None or list(inspect.signature(current).parameters) != _EXPECTED_PARAMETERS:
            raise RuntimeError(
                f"gem_lightning.data.object_store cannot make LitData accept http:// endpoints: {PATCHED_FUNCTION}"
                f"({', '.join(_EXPECTED_PARAMETERS)}) is not in the installed LitData (found {current!r}). "
                "Check whether LitData now accepts http endpoints itself and update or drop this shim."
            )
        downloader._build_obstore_s3_store = _allowing_plain_http(current)


def _allowing_plain_http(build_store: Callable[[str, Any], Any]) -> Callable[[str, Any], Any]:
    """``build_store`` (LitData's), with ``allow_http`` added to the store's client options for ``http://`` endpoints."""

    def build_store_allowing_http(bucket: str, s3_client: Any) -> Any:
        store = build_store(bucket, s3_client)
        if not str(store.config.get("endpoint", "")).startswith("http://"):
            return store
        from obstore.store import S3Store

        return S3Store(
            config=store.config,
            client_options={**(store.client_options or {}), "allow_http": True},
            retry_config=store.retry_config,
            credential_provider=store.credential_provider,
        )

    build_store_allowing_http._allows_plain_http = True  # type: ignore[attr-defined]
    build_store_allowing_http.__wrapped__ = build_store  # type: ignore[attr-defined]
    return build_store_allowing_http

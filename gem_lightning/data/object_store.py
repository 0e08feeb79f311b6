"""LitData streams on S3 and S3-compatible stores (AWS S3, MinIO, SeaweedFS): options, one fix, clear errors.

How LitData 0.2.76 reaches S3 (read from its source)
-----------------------------------------------------
* Both ``litdata.optimize(output_dir="s3://...")`` and ``StreamingDataset("s3://...")`` take
  ``storage_options``; LitData passes them unchanged as keyword arguments to
  ``boto3.Session().client("s3", **storage_options)`` (``litdata/streaming/client.py``,
  ``S3Client._create_client``). So the keys are boto3's: ``endpoint_url``, ``aws_access_key_id``,
  ``aws_secret_access_key``, ``aws_session_token``, ``region_name``, ``config``. Without them boto3's
  own chain applies: ``AWS_ENDPOINT_URL`` / ``AWS_ENDPOINT_URL_S3``, ``AWS_ACCESS_KEY_ID``,
  ``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION``, ``AWS_PROFILE``, instance roles.
* boto3 lists, reads ``index.json`` and does the writer's existence checks. Chunk uploads (writer,
  in its spawned workers and in the parent for ``index.json``) and chunk downloads (reader) go
  through **obstore**, a hard dependency of LitData, whose ``S3Store`` LitData builds from that
  boto3 client (endpoint, region, a credential callback) in
  ``litdata.streaming.downloader._build_obstore_s3_store``. s5cmd is not used by this version.
* LitData's default boto3 config retries 1000 times in adaptive mode (backoff up to 20 s): with the
  store down, opening a dataset was still retrying after 45 s in our check, and would for hours.
  :func:`storage_options` passes a config with 3 tries and short timeouts: it fails in under a second.

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
while real MinIO and SeaweedFS deployments on a private network commonly run plain HTTP. Pinning
another LitData does not help either: 0.2.76 is what the project uses, it has no setting for this,
and no version is known to fix it. ``tests/test_object_store.py`` checks that LitData alone still
refuses ``http://``, so the day a release fixes it that test fails and this shim can go.

LitData's ``optimize`` starts its workers with ``spawn``, so a patch made in the parent is not in
them. The wrapper travels with the options instead: :func:`storage_options` puts a
:class:`LitDataS3Config` (a botocore ``Config``) in them, and unpickling it in a worker installs the
wrapper there before that worker builds a store. Reader workers (fork or spawn) get it the same way.

Upstream: https://github.com/Lightning-AI/litData/blob/main/src/litdata/streaming/downloader.py,
``_build_obstore_s3_store`` (line 287 of the installed 0.2.76; its ``client_options=`` is line 318). A
private name: :mod:`gem_lightning.compat.litdata` lists it and is the only module that reads or replaces it.
"""

from __future__ import annotations

import inspect
import os
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from botocore.config import Config

from gem_lightning.compat.litdata import OBSTORE_S3_STORE_BUILDER, PARAMETERS, obstore_s3_store_builder, replace_obstore_s3_store_builder
from gem_lightning.errors import UserInputError

S3_SCHEME = "s3"
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

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._options = options

    def __reduce__(self) -> tuple:
        return (_unpickle_config, (self._options,))


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


def s3_client(settings: S3Settings | None = None) -> Any:
    """A boto3 S3 client with the same endpoint, keys and retries LitData gets from :func:`storage_options`."""
    import boto3

    return boto3.client("s3", **storage_options("s3://", settings))


def read_text(url: str, settings: S3Settings | None = None) -> str | None:
    """The UTF-8 text of the object at ``s3://bucket/key``, or None when there is none (small files: metadata)."""
    bucket, key = split_s3_url(url)
    client = s3_client(settings)
    with explain_s3_errors(url, settings):
        try:
            return client.get_object(Bucket=bucket, Key=key)["Body"].read().decode()
        except client.exceptions.NoSuchKey:
            return None


def write_text(url: str, text: str, settings: S3Settings | None = None) -> None:
    """Write ``text`` (UTF-8) as the object at ``s3://bucket/key``, replacing any."""
    bucket, key = split_s3_url(url)
    with explain_s3_errors(url, settings):
        s3_client(settings).put_object(Bucket=bucket, Key=key, Body=text.encode())


def accept_plain_http_endpoints() -> None:
    """Make LitData's obstore ``S3Store`` accept ``http://`` endpoints in this process (idempotent).

    Raises:
        RuntimeError: LitData no longer has ``_build_obstore_s3_store(bucket, s3_client)``; this
            shim must be revisited for the installed LitData version.
    """
    expected = PARAMETERS[OBSTORE_S3_STORE_BUILDER]
    with _install_lock:
        current = obstore_s3_store_builder()
        if getattr(current, "_allows_plain_http", False):
            return
        if current is None or tuple(inspect.signature(current).parameters) != expected:
            raise RuntimeError(
                f"gem_lightning.data.object_store cannot make LitData accept http:// endpoints: {OBSTORE_S3_STORE_BUILDER}"
                f"({', '.join(expected)}) is not in the installed LitData (found {current!r}). "
                "Check whether LitData now accepts http endpoints itself and update or drop this shim."
            )
        replace_obstore_s3_store_builder(_allowing_plain_http(current))


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


# ---------------------------------------------------------------------------------------------
# Clear errors. What LitData 0.2.76 raises, seen against a real S3 gateway (SeaweedFS):
#   wrong secret / key id   botocore ClientError SignatureDoesNotMatch / InvalidAccessKeyId
#                           (writer's ListObjectsV2); the reader's HeadObject of index.json only
#                           says "(403) ... Forbidden" (HEAD has no body); obstore, mid-stream:
#                           PermissionDeniedError "403 Forbidden: <Code>SignatureDoesNotMatch".
#   missing bucket          botocore NoSuchBucket (writer); reader: ClientError "(404) HeadObject
#                           Not Found", same as a missing index.json; obstore: FileNotFoundError
#                           "<Code>NoSuchBucket".
#   endpoint unreachable    botocore EndpointConnectionError "Could not connect to the endpoint URL"
#                           (from ConnectionRefusedError); obstore GenericError "HTTP error: error
#                           sending request", which the reader wraps in RuntimeError "Chunk prefetch
#                           thread crashed ..." and DataLoader workers in "Caught RuntimeError in
#                           DataLoader worker process N".
#   plain http, no shim     obstore GenericError "HTTP error: builder error".
# A bare 403/404 from a HEAD is ambiguous, so :func:`s3_user_error` asks the store once more with a
# ListObjectsV2, whose error names the cause.
# ---------------------------------------------------------------------------------------------

CREDENTIAL_CODES = ("SignatureDoesNotMatch", "InvalidAccessKeyId", "InvalidClientTokenId", "ExpiredToken", "InvalidToken")
NO_CREDENTIAL_MARKERS = ("NoCredentialsError", "PartialCredentialsError", "Unable to locate credentials")
UNREACHABLE_MARKERS = (
    "EndpointConnectionError", "ConnectTimeoutError", "ConnectionClosedError", "Could not connect to the endpoint URL",
    "error sending request", "Connection refused", "connection refused",
)  # fmt: skip
PLAIN_HTTP_REFUSED_MARKER = "HTTP error: builder error"


def _chain(error: BaseException) -> Iterator[BaseException]:
    """``error`` and everything it was raised from or while handling, once each."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _error_text(error: BaseException) -> str:
    """Type names and messages of the whole chain: LitData often re-raises S3 errors as text."""
    return " | ".join(f"{type(e).__name__}: {e}" for e in _chain(error))


def _http_status(error: BaseException) -> int | None:
    """The HTTP status of the first botocore ``ClientError`` in the chain, if any."""
    for e in _chain(error):
        status = getattr(e, "response", {}).get("ResponseMetadata", {}).get("HTTPStatusCode") if hasattr(e, "response") else None
        if status:
            return int(status)
    return None


def classify_s3_error(error: BaseException) -> str | None:
    """The cause an S3 failure names: ``credentials``, ``no-credentials``, ``no-bucket``, ``access-denied``,
    ``unreachable``, ``plain-http-refused``, or for a bare HEAD ``forbidden``/``not-found``; None if not S3's."""
    text = _error_text(error)
    if any(code in text for code in CREDENTIAL_CODES):
        return "credentials"
    if any(marker in text for marker in NO_CREDENTIAL_MARKERS):
        return "no-credentials"
    if "NoSuchBucket" in text:
        return "no-bucket"
    if "AccessDenied" in text:
        return "access-denied"
    if PLAIN_HTTP_REFUSED_MARKER in text:
        return "plain-http-refused"
    if any(marker in text for marker in UNREACHABLE_MARKERS):
        return "unreachable"
    status = _http_status(error)
    return {403: "forbidden", 404: "not-found"}.get(status) if status else None


def _probe(url: str, options: Mapping[str, Any]) -> BaseException | None:
    """List one key under ``url`` with these options: the error S3 names, or None when it works."""
    import boto3

    bucket, prefix = split_s3_url(url)
    try:
        boto3.client("s3", **options).list_objects_v2(Bucket=bucket, Prefix=prefix, MaxKeys=1)
    except Exception as error:  # noqa: BLE001 -- the error is the answer
        return error
    return None


def _unreachable_reason(text: str) -> str:
    if "refused" in text:
        return "connection refused"
    if "timed out" in text.lower() or "Timeout" in text:
        return "timed out"
    if "resolve" in text or "not known" in text or "dns error" in text:
        return "host name not found"
    return "no connection"


def s3_user_error(error: BaseException, url: str, settings: S3Settings | None = None) -> UserInputError | None:
    """A one-line :class:`UserInputError` naming the cause of ``error`` on ``url``; None if it is not an S3 failure.

    Raise it ``from error`` so the original stays in the traceback for a debugger.
    """
    if not is_s3_url(url):
        return None
    settings = settings or S3Settings()
    cause = classify_s3_error(error)
    if cause in ("forbidden", "not-found"):
        probed = _probe(url, storage_options(url, settings))
        cause = (classify_s3_error(probed) if probed else None) or ("access-denied" if cause == "forbidden" else "no-dataset")
    if cause is None:
        return None
    bucket, prefix = split_s3_url(url)
    endpoint = settings.effective_endpoint() or "AWS S3"
    messages = {
        "credentials": f"the S3 store at {endpoint} rejected the credentials for {url}: check the access key and secret key "
        "(AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or the S3 settings).",
        "no-credentials": f"no S3 credentials found for {url}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE.",
        "no-bucket": f"the S3 bucket {bucket!r} does not exist at {endpoint}: create it, or fix the bucket in {url}.",
        "access-denied": f"the S3 store at {endpoint} denied access to {url}: these credentials may not use bucket {bucket!r}.",
        "no-dataset": f"no LitData stream at {url}: bucket {bucket!r} has no {prefix + '/' if prefix else ''}index.json; "
        "write the stream there first, or fix the path.",
        "unreachable": f"cannot reach the S3 endpoint {endpoint} for {url} ({_unreachable_reason(_error_text(error))}): "
        "check that the store is running and the endpoint URL (AWS_ENDPOINT_URL) is right.",
        "plain-http-refused": f"LitData refused the plain-http S3 endpoint {endpoint} for {url}: pass "
        "storage_options(url) from gem_lightning.data.object_store to LitData.",
    }
    return UserInputError(messages[cause])


@contextmanager
def explain_s3_errors(url: str, settings: S3Settings | None = None) -> Iterator[None]:
    """Re-raise S3 failures inside the block as one-line :class:`UserInputError`; other errors pass unchanged."""
    try:
        yield
    except UserInputError:
        raise
    except Exception as error:
        user_error = s3_user_error(error, url, settings)
        if user_error is None:
            raise
        raise user_error from error

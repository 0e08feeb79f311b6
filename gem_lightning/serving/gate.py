"""What an HTTP request must pass before it reaches the model: API key, size limit, body format.

LitServe hands its ``LitAPI.decode_request`` the request's JSON (or form) and answers anything
that fails there with a 500; and in a batch, one request's error would be every request's error.
So every ``POST /predict`` is checked here, in the HTTP process, before it is queued: the API
key (401), the body size (413), the content type (415), JSON and base64 (400), ``top_k`` (400).
The three accepted bodies (raw image bytes, multipart field ``file``, JSON ``{"image": base64}``)
become one :class:`Upload`: the image file's bytes, as sent, and ``top_k``, with no JSON or base64
envelope left. :func:`checked_upload` hands it on; :mod:`gem_lightning.serving.decoding` decodes it,
still in the HTTP process, with the same decoder as ``predict``, and the LitAPI's ``decode_request``
receives the pixels (LitServe queues whatever FastAPI resolves for that parameter's annotation).
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
from dataclasses import dataclass
from urllib.parse import parse_qs

from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

API_KEY_HEADER = "X-API-Key"
PUBLIC_PATHS = frozenset({"/"})
"""Served without the API key: the web page holds no data and asks for the key itself."""
RAW_TYPES = ("image/", "application/octet-stream")
DRAIN_BYTES = 64 * 2**20
"""How much of an oversized body is read (and dropped) before the 413 is sent."""


class RequestProblem(Exception):
    """A request the server refuses: HTTP ``status`` and a message naming the problem and the fix."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message

    def response(self) -> JSONResponse:
        return JSONResponse({"detail": self.message}, status_code=self.status)


@dataclass(frozen=True)
class Upload:
    """A ``POST /predict`` that passed the gate: the image file's bytes and how many classes to answer."""

    image: bytes
    top_k: int
    cam: bool = False
    """``?cam=true``: the answer also carries where the model looked (``gem_lightning.reports.cam``)."""


async def checked_upload(request: Request) -> Upload:
    """The :class:`Upload` the gate made of ``request`` (:func:`gem_lightning.serving.decoding.decoded_upload` decodes it)."""
    return request.state.upload


@dataclass(frozen=True)
class Limits:
    """What one ``POST /predict`` may carry.

    Args:
        max_body_bytes: the largest request body (the image, or its multipart / base64 envelope).
        num_classes: ``top_k`` may be 1 to this.
        default_top_k: classes answered when the request names no ``top_k``.
    """

    max_body_bytes: int
    num_classes: int
    default_top_k: int = 5


class GateMiddleware:
    """ASGI middleware: the API key for every route but the page, and ``POST /predict``'s body.

    Args:
        app: the LitServe FastAPI app.
        limits: body size and ``top_k`` range.
        api_key: required in the ``X-API-Key`` header when set.
        predict_path: the LitAPI's route.
    """

    def __init__(self, app: ASGIApp, limits: Limits, api_key: str | None = None, predict_path: str = "/predict") -> None:
        self.app = app
        self.limits = limits
        self.api_key = api_key
        self.predict_path = predict_path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        try:
            self._check_api_key(request)
            if scope["path"] == self.predict_path and scope["method"] == "POST":
                top_k = self._top_k(request)
                body = await self._read_body(request, receive)
                request.state.upload = Upload(await _image(request, body), top_k, _wants_cam(request))
                receive = _replay(body, receive)
        except RequestProblem as problem:
            await problem.response()(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _check_api_key(self, request: Request) -> None:
        if self.api_key is None or request.url.path in PUBLIC_PATHS:
            return
        given = request.headers.get(API_KEY_HEADER)
        if given is None:
            raise RequestProblem(401, f"missing API key: send it in the {API_KEY_HEADER} header.")
        if not secrets.compare_digest(given.encode(), self.api_key.encode()):
            raise RequestProblem(401, f"wrong API key in the {API_KEY_HEADER} header.")

    def _top_k(self, request: Request) -> int:
        values = parse_qs(request.url.query).get("top_k")
        if not values:
            return min(self.limits.default_top_k, self.limits.num_classes)
        try:
            top_k = int(values[-1])
        except ValueError:
            top_k = 0
        if not 1 <= top_k <= self.limits.num_classes:
            raise RequestProblem(400, f"top_k must be a whole number from 1 to {self.limits.num_classes}, got {values[-1]!r}.")
        return top_k

    async def _read_body(self, request: Request, receive: Receive) -> bytes:
        """The whole body, or a 413 once it passes the limit (the rest is read and dropped, up to
        :data:`DRAIN_BYTES`, so that the client, still sending, gets the answer instead of a reset)."""
        limit = self.limits.max_body_bytes
        declared = request.headers.get("content-length")
        chunks, size = [], 0
        too_large = declared is not None and declared.isdigit() and int(declared) > limit
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise RequestProblem(400, "the client disconnected before sending the whole body.")
            chunk = message.get("body", b"")
            size += len(chunk)
            too_large = too_large or size > limit
            if not too_large:
                chunks.append(chunk)
            if not message.get("more_body", False) or size > limit + DRAIN_BYTES:
                break
        if too_large:
            raise RequestProblem(413, f"the request body is larger than the limit of {limit:,} bytes (serve --max_body_mb).")
        return b"".join(chunks)


def _wants_cam(request: Request) -> bool:
    """``?cam=true|false`` (also 1/0, yes/no); absent: false."""
    values = parse_qs(request.url.query).get("cam")
    if not values:
        return False
    if values[-1].lower() not in ("1", "true", "yes", "0", "false", "no"):
        raise RequestProblem(400, f"cam must be true or false, got {values[-1]!r}.")
    return values[-1].lower() in ("1", "true", "yes")


async def _image(request: Request, body: bytes) -> bytes:
    """The image file's bytes from any accepted body, or a RequestProblem."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if not body:
        raise RequestProblem(
            400, "the request body is empty: send the image's bytes (or a multipart field 'file', or JSON {\"image\": <base64>})."
        )
    if content_type.startswith(RAW_TYPES):
        return body
    if content_type == "multipart/form-data":
        return await _multipart_file(request.scope, body)
    if content_type == "application/json":
        return _json_image(body)
    raise RequestProblem(
        415,
        f"unsupported Content-Type {content_type or '(none)'!r}: send the image with Content-Type image/jpeg, "
        "image/png, ... (or application/octet-stream), as multipart/form-data field 'file', or as "
        'application/json {"image": "<base64>"}.',
    )


async def _multipart_file(scope: Scope, body: bytes) -> bytes:
    try:
        form = await Request(scope, _replay(body, None)).form()
    except Exception as error:  # starlette's MultiPartException, or a malformed boundary
        raise RequestProblem(400, f"malformed multipart/form-data body ({error}).") from None
    upload = form.get("file")
    if not isinstance(upload, UploadFile):
        fields = ", ".join(repr(key) for key in form.keys()) or "none"
        raise RequestProblem(400, f"the multipart form has no file field 'file' (fields: {fields}).")
    return await upload.read()


def _json_image(body: bytes) -> bytes:
    """The image file sent as ``{"image": "<base64>"}`` (a ``data:`` URL prefix is allowed)."""
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise RequestProblem(400, f'malformed JSON body ({error}); expected {{"image": "<base64>"}}.') from None
    if not isinstance(document, dict) or not isinstance(document.get("image"), str):
        raise RequestProblem(400, 'the JSON body must be an object with a string field "image" holding the base64 image.')
    text = document["image"]
    if text.startswith("data:") and "," in text:
        text = text.split(",", 1)[1]
    try:
        decoded = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as error:
        raise RequestProblem(400, f'"image" is not valid base64 ({error}).') from None
    if not decoded:
        raise RequestProblem(400, '"image" is empty: it must hold the base64 of the image file.')
    return decoded


def _replay(body: bytes, receive: Receive | None) -> Receive:
    """A ``receive`` that delivers ``body`` once, then waits on the real one (for the disconnect)."""
    delivered = False

    async def replayed() -> dict:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        if receive is None:
            return {"type": "http.disconnect"}
        return await receive()

    return replayed

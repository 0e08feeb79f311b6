"""Uploads decoded in the HTTP processes, in a thread pool, so decoding overlaps the model's forward passes.

LitServe 0.2.19 calls ``LitAPI.decode_request`` in the model worker, one request after another,
just before the batch's forward pass (``litserve/loops/simple_loops.py``, ``BatchedLoop``): a
worker that decodes is a worker that does not compute, and on CPUs decoding a photo costs about
as much as classifying it. But LitServe queues whatever FastAPI resolves for ``decode_request``'s
parameter (its annotation's dependency), in the HTTP process, before the request is queued. So
that dependency, :func:`decoded_upload`, decodes the checked upload there with
:class:`~gem_lightning.inference.preprocessing.Preprocessing` (the code ``predict`` and
``GemModel.classify`` use), on a thread pool: PIL and torch release the GIL while they decode and
resize, so concurrent uploads decode in parallel with each other and with the worker's forward
pass. The worker receives ``(3, S, S)`` uint8 pixels (smaller than most photos' files).
"""

from __future__ import annotations

import asyncio
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from starlette.requests import Request
from starlette.responses import JSONResponse

from gem_lightning.data.images import BadImageError
from gem_lightning.inference.preprocessing import Preprocessing
from gem_lightning.serving.gate import Upload, checked_upload


@dataclass(frozen=True)
class Unusable:
    """An upload that is not a usable image, with the reason the decoder gave."""

    reason: str

    def response(self) -> JSONResponse:
        return JSONResponse({"detail": f"the uploaded file cannot be used: {self.reason}."}, status_code=422)


@dataclass(frozen=True)
class Prepared:
    """An upload as it crosses to the model worker: ``(3, S, S)`` uint8 pixels (or why there are none),
    or, with ``serve --decode_threads 0``, the file's bytes for the worker to decode; and how many
    classes to answer."""

    image: np.ndarray | Unusable | bytes
    top_k: int
    cam: bool = False


def default_decode_threads() -> int:
    """The cores this process may run on, at most 4 (decoding does not scale further on one HTTP process)."""
    return max(1, min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)))


class UploadDecoder:
    """Decodes uploads with a checkpoint's preprocessing on a pool of ``threads`` threads.

    Made in the ``serve`` process and inherited by the forked HTTP processes; each makes its own
    pool on first use (threads do not survive a fork) and runs torch single-threaded there, as a
    loader worker does: the parallelism is across uploads. ``threads=0`` hands the bytes on
    undecoded: the model worker decodes them, one after another (no core to spare for overlap).
    """

    def __init__(self, preprocessing: Preprocessing, threads: int | None = None) -> None:
        self.preprocessing = preprocessing
        self.threads = default_decode_threads() if threads is None else threads
        self._pool: ThreadPoolExecutor | None = None
        self._pool_pid: int | None = None

    def decode(self, data: bytes) -> np.ndarray | Unusable:
        """The photo as ``predict`` would feed it to the model, or why it cannot be used."""
        try:
            return self.preprocessing(data).numpy()
        except BadImageError as error:
            return Unusable(f"{error.reason} ({error.detail})" if error.detail else error.reason)

    async def __call__(self, upload: Upload) -> Prepared:
        """Decode ``upload`` on the pool without blocking the event loop (with no threads: leave it to the worker)."""
        if self.threads == 0:
            return Prepared(upload.image, upload.top_k, upload.cam)
        image = await asyncio.get_running_loop().run_in_executor(self._executor(), self.decode, upload.image)
        return Prepared(image, upload.top_k, upload.cam)

    def _executor(self) -> ThreadPoolExecutor:
        if self._pool is None or self._pool_pid != os.getpid():
            torch.set_num_threads(1)
            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="gem-decode")
            self._pool_pid = os.getpid()
        return self._pool


async def decoded_upload(request: Request) -> Prepared:
    """The gate's checked upload (:func:`~gem_lightning.serving.gate.checked_upload`), decoded by the
    app's :class:`UploadDecoder` (``app.state.upload_decoder``); the LitAPI's ``decode_request`` depends on it."""
    return await request.app.state.upload_decoder(await checked_upload(request))

"""The LitServe ``LitAPI`` of a trained checkpoint: upload bytes in, top-k classes out.

Each upload is decoded from its bytes, in memory, by the code that decodes a file for ``predict``
and ``GemModel.classify`` (:meth:`gem_lightning.inference.api.GemModel.preprocess`: the checkpoint's
auto-crop, background and size), so the three answer the same for the same photo. LitServe fails a
whole batch when one request raises, so a photo that cannot be decoded travels through the batch
as an :class:`Unusable` and only its own answer is the error.
"""

# No ``from __future__ import annotations``: LitServe reads ``decode_request``'s annotation as an
# object (the FastAPI dependency that hands it the upload), not as a string.

import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import litserve as ls
import torch
from fastapi import Depends
from starlette.responses import JSONResponse

from gem_lightning.data.images import BadImageError
from gem_lightning.inference.api import GemModel, load_model
from gem_lightning.serving.gate import Upload, checked_upload


@dataclass(frozen=True)
class Unusable:
    """An upload that is not a usable image, with the reason the decoder gave."""

    reason: str

    def response(self) -> JSONResponse:
        return JSONResponse({"detail": f"the uploaded file cannot be used: {self.reason}."}, status_code=422)


Decoded = tuple[torch.Tensor | Unusable, int]
"""One request inside the worker: the ``(3, S, S)`` uint8 image (or why not) and its ``top_k``."""


class GemLitAPI(ls.LitAPI):
    """Classifies uploaded photos with the checkpoint at ``ckpt_path``.

    Args:
        ckpt_path: the trained checkpoint, loaded once per worker in :meth:`setup`.
        model_id: names the model in every answer (``{"checkpoint": ..., "sha256": ...}``).
        max_batch_size: requests LitServe may put into one forward pass (1: no batching).
        batch_timeout: seconds LitServe waits to fill a batch.
        threads: torch threads per worker (``None``: torch's default, ``OMP_NUM_THREADS`` or every core).
    """

    def __init__(
        self, ckpt_path: str | Path, model_id: dict, max_batch_size: int = 1, batch_timeout: float = 0.0, threads: int | None = None
    ) -> None:
        super().__init__(max_batch_size=max_batch_size, batch_timeout=batch_timeout)
        self.ckpt_path = str(ckpt_path)
        self.model_id = model_id
        self.threads = threads

    def setup(self, device: str) -> None:
        # Ctrl-C reaches every process of the group; the main process stops the HTTP servers
        # (which finish the requests in flight) before it stops this worker.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if self.threads:
            torch.set_num_threads(self.threads)
        self.model: GemModel = load_model(self.ckpt_path, device=device)

    def decode_request(self, request: Annotated[Upload, Depends(checked_upload)]) -> Decoded:
        """The upload that :mod:`gem_lightning.serving.gate` checked: the image file's bytes, as sent, and ``top_k``."""
        return self.decode_bytes(request.image), request.top_k

    def decode_bytes(self, data: bytes) -> torch.Tensor | Unusable:
        """The photo as ``predict`` would feed it to the model, decoded from its bytes by the same decoder."""
        try:
            return self.model.preprocess(data)
        except BadImageError as error:
            return Unusable(f"{error.reason} ({error.detail})" if error.detail else error.reason)

    def batch(self, inputs: list[Decoded]) -> list[Decoded]:
        return inputs

    def unbatch(self, outputs: list) -> list:
        return outputs

    def predict(self, x: Decoded | list[Decoded]) -> Any:
        """One forward pass over the usable images of the batch (or the single request)."""
        requests = x if self.max_batch_size > 1 else [x]
        usable = [i for i, (image, _) in enumerate(requests) if isinstance(image, torch.Tensor)]
        answers: list = [image for image, _ in requests]  # the Unusable ones stay as they are
        if usable:
            images = torch.stack([requests[i][0] for i in usable]).to(self.model.device)
            with torch.inference_mode():
                probs = self.model.classifier.predict_proba(images).cpu()
            for row, i in zip(probs, usable):
                values, labels = row.topk(requests[i][1])
                answers[i] = [(self.model.class_names[label], value) for label, value in zip(labels.tolist(), values.tolist())]
        return answers if self.max_batch_size > 1 else answers[0]

    def encode_response(self, output: list[tuple[str, float]] | Unusable):
        """The answer's JSON, or the 422 of an unusable upload. (No return annotation: LitServe would
        make it the route's response model.)"""
        if isinstance(output, Unusable):
            return output.response()
        return {
            "predictions": [{"class": name, "probability": probability} for name, probability in output],
            "model": self.model_id,
        }

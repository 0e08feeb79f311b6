"""The LitServe ``LitAPI`` of a trained checkpoint: decoded uploads in, top-k classes out.

Each upload is decoded from its bytes, in memory, in the HTTP process
(:mod:`gem_lightning.serving.decoding`), by the code that decodes a file for ``predict`` and
``GemModel.classify`` (:class:`gem_lightning.inference.preprocessing.Preprocessing`: the checkpoint's
auto-crop, background and size), so the three answer the same for the same photo; the worker only
batches the pixels through the network (torch or ONNX Runtime: ``serve --runtime``). LitServe
fails a whole batch when one request raises, so a photo that cannot be decoded travels through the
batch as an :class:`Unusable` and only its own answer is the error.
"""

# No ``from __future__ import annotations``: LitServe reads ``decode_request``'s annotation as an
# object (the FastAPI dependency that hands it the decoded upload), not as a string.

import signal
from pathlib import Path
from typing import Annotated, Any

import litserve as ls
import torch
from fastapi import Depends

from gem_lightning.inference.answers import AnswerSettings
from gem_lightning.inference.api import GemModel, load_model
from gem_lightning.serving.decoding import Prepared, Unusable, UploadDecoder, decoded_upload

__all__ = ["Decoded", "GemLitAPI", "Unusable"]

Decoded = tuple[torch.Tensor | Unusable, int, bool]
"""One request inside the worker: the ``(3, S, S)`` uint8 image (or why not), its ``top_k`` and
whether it asks where the model looked (``?cam=true``)."""


class WorkerDecoder(UploadDecoder):
    """Decodes in the model worker (``serve --decode_threads 0``), into the tensor the batch takes."""

    def decode(self, data: bytes) -> torch.Tensor | Unusable:
        image = super().decode(data)
        return image if isinstance(image, Unusable) else torch.from_numpy(image)


class GemLitAPI(ls.LitAPI):
    """Classifies uploaded photos with the checkpoint at ``ckpt_path``.

    Args:
        ckpt_path: the trained checkpoint, loaded once per worker in :meth:`setup`.
        model_id: names the model in every answer (``{"checkpoint": ..., "sha256": ...}``).
        max_batch_size: requests LitServe may put into one forward pass (1: no batching).
        batch_timeout: seconds LitServe waits to fill a batch.
        threads: torch (or ONNX Runtime) threads per worker (``None``: torch's default, ``OMP_NUM_THREADS`` or every core).
        runtime: ``torch``, ``onnxruntime`` or ``onnxruntime-int8`` (its ONNX model already cached:
            :func:`gem_lightning.inference.runtime.prepare`).
        answers: prediction sets (``coverage``) and "unknown" to answer beside the top classes
            (:mod:`gem_lightning.inference.answers`; checked against the checkpoint by ``build_server``).
    """

    def __init__(
        self,
        ckpt_path: str | Path,
        model_id: dict,
        max_batch_size: int = 1,
        batch_timeout: float = 0.0,
        threads: int | None = None,
        runtime: str = "torch",
        answers: AnswerSettings = AnswerSettings(),
    ) -> None:
        super().__init__(max_batch_size=max_batch_size, batch_timeout=batch_timeout)
        self.ckpt_path = str(ckpt_path)
        self.model_id = model_id
        self.threads = threads
        self.runtime = runtime
        self.answer_settings = answers

    def setup(self, device: str) -> None:
        # Ctrl-C reaches every process of the group; the main process stops the HTTP servers
        # (which finish the requests in flight) before it stops this worker.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if self.threads:
            torch.set_num_threads(self.threads)
        settings = self.answer_settings
        self.model: GemModel = load_model(
            self.ckpt_path, device, self.runtime, coverage=settings.coverage, unknown=settings.unknown, unknown_score=settings.unknown_score
        )
        self.decoder = WorkerDecoder(self.model.preprocessing)

    def decode_request(self, request: Annotated[Prepared, Depends(decoded_upload)]) -> Decoded:
        """The upload that :mod:`gem_lightning.serving.gate` checked and the HTTP process decoded: its pixels, and ``top_k``."""
        if isinstance(request.image, bytes):  # serve --decode_threads 0: decoded here, by the same decoder
            return self.decoder.decode(request.image), request.top_k, request.cam
        image = request.image if isinstance(request.image, Unusable) else torch.from_numpy(request.image)
        return image, request.top_k, request.cam

    def batch(self, inputs: list[Decoded]) -> list[Decoded]:
        return inputs

    def unbatch(self, outputs: list) -> list:
        return outputs

    def predict(self, x: Decoded | list[Decoded]) -> Any:
        """One forward pass over the usable images of the batch (or the single request): each answer is a
        dict of the top classes (``predictions``), what ``answers`` adds, and ``cam`` when asked for."""
        requests = x if self.max_batch_size > 1 else [x]
        usable = [i for i, (image, *_) in enumerate(requests) if isinstance(image, torch.Tensor)]
        answers: list = [image for image, *_ in requests]  # the Unusable ones stay as they are
        if usable:
            images = torch.stack([requests[i][0] for i in usable])
            probs = self.model.predict_proba(images).cpu()
            label_sets = self.model.label_sets(probs) if self.model.multilabel else [None] * len(usable)
            extras = self.model.answers(probs) if self.model.answers is not None else [{} for _ in usable]
            for row, i, label_set, extra in zip(probs, usable, label_sets, extras):
                values, labels = row.topk(requests[i][1])
                ranked = [(self.model.class_names[label], value) for label, value in zip(labels.tolist(), values.tolist())]
                answers[i] = {"predictions": ranked, **self._with_probabilities(extra, row)}
                if label_set is not None:
                    answers[i]["labels"] = label_set
                cam = self.where_it_looked(requests[i][0], int(labels[0])) if requests[i][2] else None
                if cam is not None:
                    answers[i]["cam"] = cam
        return answers if self.max_batch_size > 1 else answers[0]

    def _with_probabilities(self, extra: dict[str, Any], probs: torch.Tensor) -> dict[str, Any]:
        """``extra`` with each class of its prediction set as ``{"class", "probability"}`` and the coverage promised."""
        if "prediction_set" not in extra:
            return extra
        index = {name: label for label, name in enumerate(self.model.class_names)}
        members = [{"class": name, "probability": float(probs[index[name]])} for name in extra["prediction_set"]]
        return {**extra, "prediction_set": members, "coverage": self.answer_settings.coverage}

    def where_it_looked(self, image: torch.Tensor, label: int) -> str | None:
        """The photo with the Grad-CAM map of ``label`` over it, a PNG data URL (the torch network's,
        whatever the runtime); None without the ``audit`` extra (``grad-cam``)."""
        try:
            from gem_lightning.reports.cam import overlay_data_url
        except ImportError:
            return None
        return overlay_data_url(self.model.classifier, image.to(self.model.device), label)

    def encode_response(self, output: dict[str, Any] | Unusable):
        """The answer's JSON (a multi-label model's ``labels``, what ``answers`` adds, ``cam`` when asked
        for), or the 422 of an unusable upload. (No return annotation: LitServe would make it the route's
        response model.)"""
        if isinstance(output, Unusable):
            return output.response()
        answer = {**output, "predictions": _named(output["predictions"]), "model": self.model_id}
        if "labels" in output:
            answer["labels"] = _named(output["labels"])
        return answer


def _named(ranked: list[tuple[str, float]]) -> list[dict[str, Any]]:
    return [{"class": name, "probability": probability} for name, probability in ranked]

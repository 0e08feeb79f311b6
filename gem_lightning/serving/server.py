"""A LitServe server for one checkpoint: ``POST /predict``, ``GET /info``, ``GET /health``, ``GET /``.

``/predict`` is the :class:`~gem_lightning.serving.api.GemLitAPI`, behind the
:class:`~gem_lightning.serving.gate.GateMiddleware`; ``/info`` and ``/health`` are LitServe's own
(``/info`` carries the checkpoint's description as LitServe's ``model_metadata``); ``/`` is the web
page, in place of LitServe's "litserve running". Every error, an unknown route included, is a JSON
``{"detail": ...}``; LitServe answers what it did not foresee with a 500 that carries no traceback.
Requests in flight when a model worker dies get a 503 (:mod:`~gem_lightning.serving.supervision`).
Uploads are decoded in the HTTP processes (:mod:`~gem_lightning.serving.decoding`); the model worker
runs torch or ONNX Runtime (``ServeOptions.runtime``), whose ONNX model is made before the workers start.
"""

from __future__ import annotations

import hashlib
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import litserve as ls
import torch
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.routing import Route

from gem_lightning.inference import runtime as runtimes
from gem_lightning.inference.answers import AnswerSettings, check_calibration
from gem_lightning.inference.preprocessing import Preprocessing
from gem_lightning.serving.api import GemLitAPI
from gem_lightning.serving.decoding import UploadDecoder
from gem_lightning.serving.gate import GateMiddleware, Limits
from gem_lightning.serving.supervision import fail_requests_on_worker_loss
from gem_lightning.training.checkpoints import load_checkpoint, upgrade_hparams
from gem_lightning.training.combine import CALIBRATION

ENDPOINTS = "POST /predict, GET /info, GET /health, GET / (the web page)"


@dataclass(frozen=True)
class ServeOptions:
    """How the server runs; ``python main.py serve --help`` documents each."""

    accelerator: str = "auto"
    devices: int | str = "auto"
    workers_per_device: int = 1
    threads: int | None = None
    max_batch_size: int = 16
    batch_timeout: float = 0.01
    timeout: float = 30.0
    max_body_mb: float = 10.0
    api_key: str | None = None
    runtime: str = "torch"
    int8_images: str | None = None
    decode_threads: int | None = None
    answers: AnswerSettings = AnswerSettings()


def describe_checkpoint(ckpt_path: str | Path) -> dict:
    """What ``GET /info`` says about the model: classes, input, architecture, stored metrics, identity."""
    path = Path(ckpt_path)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # not a zip/pickle file, truncated, or objects of unknown classes
        raise ValueError(f"torch cannot read it as a checkpoint ({type(error).__name__}: {error})") from None
    hparams = upgrade_hparams(dict(checkpoint.get("hyper_parameters", {})))
    metrics: dict = {"epoch": checkpoint.get("epoch"), "global_step": checkpoint.get("global_step")}
    for state in checkpoint.get("callbacks", {}).values():
        if isinstance(state, dict) and state.get("monitor") and state.get("best_model_score") is not None:
            metrics[f"best {state['monitor']}"] = float(state["best_model_score"])
    architecture = describe_network(hparams["network"], hparams.get("tta", "none"))
    return {
        "checkpoint": path.name,  # not the server's folders
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "class_names": list(hparams.get("class_names") or []),
        "image_size": hparams.get("image_size"),
        "preprocessing": hparams.get("preprocessing") or {},
        "architecture": architecture,
        "metrics": metrics,
    }


def describe_network(network: dict, tta: str) -> dict:
    """The network spec's settings, with ``arch``: the library model's name, or ``vgg``."""
    init_args = dict(network.get("init_args") or {})
    spec = network["class_path"].rpartition(".")[2]
    return {
        "arch": init_args.pop("name", None) or spec.removesuffix("Spec").lower(),
        "spec": network["class_path"],
        **init_args,
        "tta": tta,
    }


def build_server(ckpt_path: str | Path, options: ServeOptions = ServeOptions()) -> ls.LitServer:
    """The LitServer for ``ckpt_path``; ``server.run(host=..., port=...)`` starts it."""
    info = describe_checkpoint(ckpt_path)
    if not info["class_names"] or not info["image_size"]:
        raise ValueError("it holds no class names or image size: is it a gem-lightning checkpoint?")
    model_id = {"checkpoint": info["checkpoint"], "sha256": info["sha256"][:12]}
    if options.answers.asked:
        record = load_checkpoint(ckpt_path).get(CALIBRATION)
        kind = check_calibration(record, options.answers, tta=info["architecture"]["tta"], runtime=options.runtime, prefix="--",
                                 checkpoint=info["checkpoint"])  # fmt: skip
        info["answers"] = {"coverage": options.answers.coverage, "unknown": options.answers.unknown, "unknown_score": kind}
    prepare_runtime(ckpt_path, options.runtime, options.int8_images)
    api = GemLitAPI(
        ckpt_path, model_id, options.max_batch_size, options.batch_timeout, options.threads, options.runtime, answers=options.answers
    )
    limits = Limits(max_body_bytes=int(options.max_body_mb * 2**20), num_classes=len(info["class_names"]))
    server = ls.LitServer(
        api,
        accelerator=options.accelerator,
        devices=options.devices,
        workers_per_device=options.workers_per_device,
        timeout=options.timeout,
        model_metadata=info,
        middlewares=[(GateMiddleware, {"limits": limits, "api_key": options.api_key})],
        disable_openapi_url=True,
    )
    server.app.state.upload_decoder = UploadDecoder(Preprocessing.from_hparams(info), options.decode_threads)
    _serve_page_at_root(server)
    fail_requests_on_worker_loss(server)
    server.app.add_exception_handler(StarletteHTTPException, _json_http_error)
    return server


def prepare_runtime(ckpt_path: str | Path, runtime: str, int8_images: str | None = None) -> None:
    """Export (and for int8 quantize and measure) the ONNX model before the workers start, so that a
    refusal is one line here and a worker (or its replacement) only loads the cached file.

    The work runs in a spawned process when the cache lacks it: the ``serve`` process, which forks
    the HTTP servers, then never loads the network or starts torch's thread pool.
    """
    runtimes.require_onnxruntime(runtime)
    if runtime == "torch" or runtimes.is_cached(ckpt_path, runtime):
        return
    print(f"Making the {runtime} model of {Path(ckpt_path).name} (exported once, then cached beside it) ...", flush=True)
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        pool.submit(runtimes.prepare, str(ckpt_path), runtime, int8_images).result()


def _serve_page_at_root(server: ls.LitServer) -> None:
    """``GET /``: the self-contained web page, ``gem_lightning/serving/page.html``."""
    page = resources.files("gem_lightning.serving").joinpath("page.html").read_text(encoding="utf-8")

    async def index(request: Request) -> HTMLResponse:
        return HTMLResponse(page)

    routes = server.app.router.routes
    routes[:] = [route for route in routes if getattr(route, "path", None) != "/"]
    routes.insert(0, Route("/", index, methods=["GET"]))


async def _json_http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
    """FastAPI's ``{"detail": ...}``, with the route named when there is none."""
    detail = error.detail
    if error.status_code == 404 and detail == "Not Found":
        detail = f"no such route {request.method} {request.url.path}; this server has {ENDPOINTS}."
    elif error.status_code == 405:
        detail = f"{request.method} is not allowed on {request.url.path}; this server has {ENDPOINTS}."
    return JSONResponse({"detail": detail}, status_code=error.status_code, headers=getattr(error, "headers", None))

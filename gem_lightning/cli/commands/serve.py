"""``python main.py serve --ckpt_path <ckpt>``: the model behind an HTTP address, with a web page.

The server is :func:`gem_lightning.serving.server.build_server` (LitServe).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
from collections.abc import Sequence
from pathlib import Path

from gem_lightning.errors import UserInputError
from gem_lightning.inference.answers import AnswerSettings
from gem_lightning.inference.runtime import RUNTIMES
from gem_lightning.serving.server import ENDPOINTS, ServeOptions, build_server
from gem_lightning.serving.supervision import Supervisor
from gem_lightning.tracking.checkpoint_uri import resolve_checkpoint
from gem_lightning.training.unknown import SCORES

API_KEY_ENV = "GEM_LIGHTNING_API_KEY"
DEFAULTS = ServeOptions()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="main.py serve",
        description=f"Serve a trained checkpoint over HTTP with LitServe: {ENDPOINTS}. Concurrent requests are "
        "batched into one forward pass. A model worker that dies is restarted (its requests get a 503); if workers keep "
        "dying or cannot load the model, it exits with status 1. Ctrl-C or SIGTERM stops it after the requests in flight.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--ckpt_path",
        required=True,
        help="a .ckpt file written by training, or one kept by MLflow: runs:/<run id>/<path>, models:/<name>/<version>",
    )
    parser.add_argument(
        "--host", default="127.0.0.1", choices=["127.0.0.1", "0.0.0.0", "::"], help="address to listen on (0.0.0.0: every interface)"
    )
    parser.add_argument("--port", type=int, default=8000, help="port to listen on (1024-65535)")
    parser.add_argument("--accelerator", default=DEFAULTS.accelerator, choices=["auto", "cpu", "cuda", "mps"], help="where the model runs")
    parser.add_argument("--devices", default=DEFAULTS.devices, help="how many GPUs to use, or auto")
    parser.add_argument("--workers_per_device", type=int, default=DEFAULTS.workers_per_device, help="model worker processes per device")
    parser.add_argument(
        "--threads", type=int, default=None,
        help="torch threads per worker (None: torch's default, $OMP_NUM_THREADS or every core); on a busy or shared "
        "machine use the cores actually free: there, 2 threads on 2 busy cores answered ~8x slower than 1",
    )  # fmt: skip
    parser.add_argument(
        "--runtime", default=DEFAULTS.runtime, choices=RUNTIMES,
        help="what runs the network: torch, or ONNX Runtime (exported from the checkpoint on first use, checked against torch, "
        "cached beside it as <ckpt>.onnx); onnxruntime-int8 is quantized, calibrated once on --int8_images, and refused if it "
        "loses more than half a point of top-1 accuracy there (pip install 'gem-lightning[onnxruntime]')",
    )  # fmt: skip
    parser.add_argument(
        "--int8_images", default=None,
        help="with --runtime onnxruntime-int8, the first time: a folder or glob of 40+ photos like those to serve (in class "
        "folders to measure accuracy); up to 128 calibrate, the rest measure",
    )  # fmt: skip
    parser.add_argument(
        "--decode_threads", type=int, default=None,
        help="threads decoding uploads in the HTTP process, in parallel with the model worker's forward passes (default: the "
        "cores, at most 4); 0 decodes in the model worker, one upload after another: on a machine with no core to spare, "
        "a little faster at concurrency 1 (docs/performance.md)",
    )  # fmt: skip
    parser.add_argument(
        "--coverage", type=float, default=None,
        help="also answer each photo's prediction set: the fewest classes that hold the true class with this probability "
        "(0 to 1, exclusive; e.g. 0.9); needs a checkpoint written by `main.py calibrate`",
    )  # fmt: skip
    parser.add_argument(
        "--unknown", type=float, default=None,
        help="answer 'unknown' for a photo unlike every class, so that this share of photos of the known classes are too "
        "(the false-rejection rate, 0 to 1 exclusive; e.g. 0.05); needs a calibrated checkpoint",
    )  # fmt: skip
    parser.add_argument(
        "--unknown_score", default="auto", choices=["auto", *SCORES],
        help="how unlike the classes a photo is: msp (1 - the top probability), energy (of the logits), mahalanobis or knn "
        "(distance of the penultimate features to the training photos'; torch runtime only); auto: the best the checkpoint holds",
    )  # fmt: skip
    parser.add_argument(
        "--max_batch_size", type=int, default=DEFAULTS.max_batch_size, help="most concurrent requests in one forward pass (1: no batching)"
    )
    parser.add_argument("--batch_timeout", type=float, default=DEFAULTS.batch_timeout, help="seconds to wait for a batch to fill")
    parser.add_argument("--timeout", type=float, default=DEFAULTS.timeout, help="seconds a request may wait before it gets a 504")
    parser.add_argument("--max_body_mb", type=float, default=DEFAULTS.max_body_mb, help="largest request body in MiB (413 above)")
    parser.add_argument(
        "--api_key", default=None, help=f"require this key in the X-API-Key header (default: ${API_KEY_ENV} if set, else none)"
    )
    parser.add_argument(
        "--log_level",
        default="warning",
        choices=["critical", "error", "warning", "info", "debug"],
        help="uvicorn's and LitServe's log level",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Start the server and block until Ctrl-C or SIGTERM; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not 1024 <= args.port <= 65535:
        parser.error(f"--port must be from 1024 to 65535, got {args.port}")
    for name in ("workers_per_device", "max_batch_size", "threads"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    if args.decode_threads is not None and args.decode_threads < 0:
        parser.error(f"--decode_threads must be 0 (decode in the model worker) or more, got {args.decode_threads}")
    try:
        answers = AnswerSettings(args.coverage, args.unknown, args.unknown_score).checked("--")
    except UserInputError as error:
        parser.error(str(error))
    ckpt_path = Path(resolve_checkpoint(args.ckpt_path))  # a download from MLflow: after the options are known to be right
    if not ckpt_path.is_file():
        parser.error(f"--ckpt_path {args.ckpt_path!r} is not a file")
    options = ServeOptions(
        accelerator=args.accelerator,
        devices=int(args.devices) if str(args.devices).isdigit() else args.devices,
        workers_per_device=args.workers_per_device,
        threads=args.threads,
        max_batch_size=args.max_batch_size,
        batch_timeout=args.batch_timeout,
        timeout=args.timeout,
        max_body_mb=args.max_body_mb,
        api_key=args.api_key or os.environ.get(API_KEY_ENV) or None,
        runtime=args.runtime,
        int8_images=args.int8_images,
        decode_threads=args.decode_threads,
        answers=answers,
    )
    try:
        _check_address_free(args.host, args.port)
        server = build_server(ckpt_path, options)
    except (ValueError, OSError, RuntimeError) as error:
        print(f"error: cannot serve {args.ckpt_path}: {error}", file=sys.stderr)
        return 2
    supervisor = Supervisor(server)
    supervisor.start()
    _stop_on_signals(os.getpid(), supervisor)
    address = f"http://{'[::1]' if args.host == '::' else args.host}:{args.port}"
    batching = f"batches of up to {options.max_batch_size}" if options.max_batch_size > 1 else "no batching"
    print(
        f"Serving {args.ckpt_path} at {address} ({options.runtime}, {batching}{', API key required' if options.api_key else ''}).\n"
        f"  web page: {address}/   predict: curl -X POST {address}/predict -H 'Content-Type: image/jpeg' --data-binary @photo.jpg\n"
        "  Ctrl-C or SIGTERM stops it.",
        flush=True,
    )
    server.run(host=args.host, port=args.port, generate_client_file=False, log_level=args.log_level)
    if supervisor.failure:
        print(f"error: stopped serving {args.ckpt_path}: {supervisor.failure}", file=sys.stderr)
        return 1  # a service manager restarts it
    return 0


def _check_address_free(host: str, port: int) -> None:
    """Fail before loading anything when another program listens on ``host:port``."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind((host, port))
        except OSError as error:
            raise OSError(f"cannot listen on {host}:{port} ({error.strerror}); choose another --port") from None


def _stop_on_signals(main_pid: int, supervisor: Supervisor) -> None:
    """SIGTERM and SIGINT make LitServe shut down as on Ctrl-C: the HTTP servers finish the requests
    in flight, then the workers stop (and the supervisor no longer restarts them). The forked HTTP
    servers inherit the handler; uvicorn raises the signal again once it has drained, and there it
    just ends the process."""

    def stop(signum, frame) -> None:
        if os.getpid() == main_pid:
            supervisor.stopping = True
            raise KeyboardInterrupt
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

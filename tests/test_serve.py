"""``python main.py serve``: a real server process on a loopback port, its answers, its errors, its stop."""

from __future__ import annotations

import asyncio
import base64
import csv
import inspect
import io
import json
import os
import socket
import tempfile
import threading
import time
import typing
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import REPO
from helpers import run_cli, train_tiny
from PIL import Image
from serving import Server, alive, descendants, free_port, start_server
from starlette.datastructures import Headers
from starlette.requests import Request

from gem_lightning.inference.api import load_model
from gem_lightning.inference.preprocessing import Preprocessing
from gem_lightning.serving.api import GemLitAPI, Unusable
from gem_lightning.serving.decoding import Prepared, UploadDecoder, decoded_upload
from gem_lightning.serving.gate import GateMiddleware, Limits, Upload
from gem_lightning.serving.server import describe_checkpoint

pytestmark = pytest.mark.slow
API_KEY = "s3cret-key"


def server_env(tmp: Path, api_key: str | None = None) -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", GEM_LIGHTNING_CACHE=str(tmp / "cache"))
    env.pop("GEM_LIGHTNING_API_KEY", None)
    if api_key:
        env["GEM_LIGHTNING_API_KEY"] = api_key
    return env


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """A tiny model trained for one epoch on colour-coded classes, saved as a checkpoint."""
    return train_tiny(tmp_path_factory.mktemp("serve"))


@pytest.fixture(scope="module")
def server(trained) -> Server:
    """One server for the module, batching, with the API key given through the environment."""
    running = start_server(
        trained.checkpoint,
        trained.root / "serve.log",
        server_env(trained.root, API_KEY),
        "--max_batch_size",
        "8",
        "--batch_timeout",
        "0.05",
    )
    yield running
    assert running.stop() == 0, running.log.read_text()


def ranked(answer) -> list[tuple[str, float]]:
    assert answer.status == 200, answer.body
    return [(p["class"], p["probability"]) for p in answer.json()["predictions"]]


def assert_same_ranking(got: list[tuple[str, float]], expected: list[tuple[str, float]], atol: float = 1e-6) -> None:
    assert [name for name, _ in got] == [name for name, _ in expected]
    assert [p for _, p in got] == pytest.approx([p for _, p in expected], abs=atol)


def test_info_and_health_describe_the_checkpoint(server, trained):
    assert server.request("/health").body == b"ok"
    model = server.request("/info").json()["model"]
    assert model["class_names"] == ["Blue Stone", "Green Stone", "Red Stone"]
    assert model["image_size"] == 32 and model["architecture"]["arch"] == "vgg" and model["architecture"]["channels"] == [8, 16]
    assert model["metrics"]["epoch"] == 1 and model["checkpoint"] == "model.ckpt" and len(model["sha256"]) == 64


def test_server_classify_and_predict_give_the_same_answer(server, trained, tmp_path):
    """The same photo through the server, ``GemModel.classify`` and the ``predict`` command."""
    model = load_model(trained.checkpoint)
    csv_path = tmp_path / "predictions.csv"
    run_cli("predict", "--ckpt_path", trained.checkpoint, "--data.predict_path", trained.test_dir, "--predictions.output", csv_path,
            "--trainer.logger", "false", "--trainer.enable_progress_bar", "false", env=server_env(tmp_path), cwd=tmp_path)  # fmt: skip
    predicted = {Path(row["path"]).name: row for row in csv.DictReader(csv_path.open())}
    for photo in trained.photos:
        served = ranked(server.predict(photo.read_bytes()))
        assert_same_ranking(served, model.classify(photo))
        row = predicted[photo.name]
        from_csv = [(row[f"class_{i}"], float(row[f"prob_{i}"])) for i in range(1, 4)]
        assert_same_ranking(served, from_csv, atol=1e-6)  # the CSV has 6 decimals
    assert server.predict(trained.photos[0].read_bytes()).json()["model"]["checkpoint"] == "model.ckpt"


def test_raw_multipart_and_json_bodies_give_the_same_answer(server, trained):
    photo = trained.photos[-1].read_bytes()
    raw = ranked(server.predict(photo))
    boundary = "gem-boundary"
    multipart = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="x.jpg"\r\nContent-Type: image/jpeg\r\n\r\n'.encode()
        + photo
        + f"\r\n--{boundary}--\r\n".encode()
    )
    assert ranked(server.predict(multipart, f"multipart/form-data; boundary={boundary}")) == raw
    as_json = json.dumps({"image": base64.b64encode(photo).decode()}).encode()
    assert ranked(server.predict(as_json, "application/json")) == raw
    assert ranked(server.predict(photo, "application/octet-stream", query="?top_k=2")) == raw[:2]


def _bomb_png() -> bytes:
    """A small PNG file of 10,000 x 8,500 pixels, more than the decoder's 80-million-pixel limit."""
    buffer = io.BytesIO()
    Image.new("L", (10_000, 8_500)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_bad_requests_get_a_4xx_naming_the_problem_and_the_server_goes_on(server, trained):
    photo = trained.photos[0].read_bytes()
    multipart_without_file = b'--b\r\nContent-Disposition: form-data; name="other"\r\n\r\nvalue\r\n--b--\r\n'
    cases = [
        # (what, answer, status, words the message must contain)
        ("not an image", server.predict(b"just some words, no pixels"), 422, "not an image"),
        ("truncated JPEG", server.predict(photo[: len(photo) // 2]), 422, "truncated or corrupt"),
        ("zero bytes", server.predict(b""), 400, "empty"),
        ("HTML named .jpg", server.predict(b"<!doctype html><html><body>hello</body></html>"), 422, "not an image"),
        ("decompression bomb", server.predict(_bomb_png(), "image/png"), 422, "decompression-bomb"),
        ("body over the limit", server.predict(b"\xff\xd8\xff" + b"\0" * (10 * 2**20)), 413, "larger than the limit"),
        ("wrong content type", server.predict(photo, "text/plain"), 415, "Content-Type"),
        ("malformed JSON", server.predict(b'{"image": ', "application/json"), 400, "malformed JSON"),
        ("malformed base64", server.predict(b'{"image": "not*base64!"}', "application/json"), 400, "base64"),
        ("JSON without image", server.predict(b'{"picture": "aGk="}', "application/json"), 400, '"image"'),
        ("multipart without file", server.predict(multipart_without_file, "multipart/form-data; boundary=b"), 400, "'file'"),
        ("top_k out of range", server.predict(photo, query="?top_k=7"), 400, "top_k"),
        ("unknown route", server.request("/nowhere"), 404, "no such route GET /nowhere"),
        ("wrong method", server.request("/predict"), 405, "GET is not allowed"),
        ("no API key", server.predict(photo, key=None), 401, "missing API key"),
        ("wrong API key", server.predict(photo, key="guess"), 401, "wrong API key"),
    ]
    for what, answer, status, words in cases:
        assert answer.status == status, (what, answer.status, answer.body)
        assert words in answer.json()["detail"], (what, answer.body)
        assert b"Traceback" not in answer.body, what
    assert server.request("/", key=None).status == 200  # the page itself needs no key
    assert ranked(server.predict(photo))  # still serving
    assert server.process.poll() is None


def test_cam_answers_show_where_the_model_looked(server, trained):
    """``?cam=true`` adds the photo, as the model saw it, with the Grad-CAM map of the top class over it."""
    photo = trained.photos[0].read_bytes()
    plain, with_map = server.predict(photo), server.predict(photo, query="?cam=true")
    assert ranked(with_map) == ranked(plain) and "cam" not in plain.json()
    url = with_map.json()["cam"]
    assert url.startswith("data:image/png;base64,")
    with Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))) as overlay:
        assert overlay.size == (32, 32)
    refused = server.predict(photo, query="?cam=maybe")
    assert refused.status == 400 and "cam must be true or false" in refused.json()["detail"]


def test_a_bad_upload_in_a_batch_fails_alone(server, trained):
    """LitServe batches concurrent requests; an unusable one must not spoil the others' answers."""
    photo = trained.photos[1].read_bytes()
    expected = ranked(server.predict(photo))
    bodies = [photo if i % 2 else b"not an image" for i in range(16)]
    with ThreadPoolExecutor(len(bodies)) as pool:
        answers = list(pool.map(server.predict, bodies))
    for body, answer in zip(bodies, answers):
        if body is photo:
            assert_same_ranking(ranked(answer), expected, atol=1e-5)  # another batch composition: float rounding only
        else:
            assert answer.status == 422, answer.body


def test_sigterm_lets_the_requests_in_flight_finish(trained, tmp_path):
    """Requests waiting in a batch when SIGTERM arrives are answered; then the server and all its processes exit."""
    server = start_server(
        trained.checkpoint, tmp_path / "serve.log", server_env(tmp_path), "--max_batch_size", "64", "--batch_timeout", "3"
    )
    photo = trained.photos[0].read_bytes()
    answers: list = []
    threads = [threading.Thread(target=lambda: answers.append(server.predict(photo))) for _ in range(6)]
    for thread in threads:
        thread.start()
    threading.Event().wait(1.0)  # the requests now wait for the batch to fill (3 s)
    children = descendants(server.process.pid)
    assert len(children) >= 2  # the HTTP server and the model worker
    assert server.stop() == 0, server.log.read_text()
    deadline = time.monotonic() + 10  # Python's resource tracker takes a moment to see its parent go
    while [pid for pid in children if alive(pid)] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [pid for pid in children if alive(pid)]  # none left behind
    for thread in threads:
        thread.join(60)
    assert [answer.status for answer in answers] == [200] * 6
    with pytest.raises(OSError):
        server.request("/health", timeout=2)


def test_serve_refuses_a_missing_or_foreign_checkpoint_or_a_busy_port_in_one_line(trained, tmp_path):
    not_a_checkpoint = tmp_path / "notes.ckpt"
    not_a_checkpoint.write_text("not a checkpoint")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        busy_port = str(busy.getsockname()[1])
        for ckpt, port, words in (
            (tmp_path / "missing.ckpt", str(free_port()), "is not a file"),
            (not_a_checkpoint, str(free_port()), "cannot read it as a checkpoint"),
            (trained.checkpoint, busy_port, f"cannot listen on 127.0.0.1:{busy_port}"),
        ):
            result = run_cli("serve", "--ckpt_path", ckpt, "--port", port, env=server_env(tmp_path), cwd=tmp_path, check=False, timeout=120)
            assert result.returncode == 2 and words in result.stderr and "Traceback" not in result.stderr, result.stderr


def through_gate(body: bytes, content_type: str, query: str = "") -> dict:
    """What the app behind the gate sees of one ``POST /predict``: the upload, and the request's own body and type."""
    seen: dict = {}

    async def app(scope, receive, send) -> None:
        seen["upload"] = Request(scope).state.upload
        seen["content-type"] = Headers(scope=scope)["content-type"]
        seen["body"] = (await receive())["body"]

    messages = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> dict:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    scope = {"type": "http", "method": "POST", "scheme": "http", "path": "/predict", "root_path": "", "query_string": query.encode(),
             "headers": [(b"content-type", content_type.encode())], "server": ("127.0.0.1", 8000)}  # fmt: skip
    asyncio.run(GateMiddleware(app, Limits(max_body_bytes=2**20, num_classes=3))(scope, receive, None))
    return seen


def test_the_gate_hands_the_api_the_image_bytes_as_sent():
    """Raw, multipart and JSON bodies reach the decoder as the image file's bytes: no base64 on the way."""
    image = b"\xff\xd8\xff" + bytes(range(256))
    multipart = b'--b\r\nContent-Disposition: form-data; name="file"; filename="x.jpg"\r\n\r\n' + image + b"\r\n--b--\r\n"
    as_json = json.dumps({"image": "data:image/jpeg;base64," + base64.b64encode(image).decode()}).encode()
    for body, content_type in ((image, "image/jpeg"), (multipart, "multipart/form-data; boundary=b"), (as_json, "application/json")):
        seen = through_gate(body, content_type, "top_k=2")
        assert seen["upload"] == Upload(image, 2), content_type
        assert (seen["body"], seen["content-type"]) == (body, content_type)  # the request itself passes unchanged
    # LitServe registers decode_request's annotation as the route's parameter: an object, not a string;
    # its dependency decodes the checked upload in the HTTP process.
    annotation = inspect.signature(GemLitAPI.decode_request).parameters["request"].annotation
    assert typing.get_args(annotation)[1].dependency is decoded_upload


def test_uploads_are_decoded_in_memory_in_the_http_process_as_predict_decodes_files(trained, monkeypatch):
    """The HTTP process decodes an upload on its thread pool with the checkpoint's preprocessing (no
    temporary file); the worker's ``decode_request`` only turns the pixels into a tensor."""
    model = load_model(trained.checkpoint)
    decoder = UploadDecoder(Preprocessing.from_hparams(describe_checkpoint(trained.checkpoint)), threads=2)

    def no_temporary_file(*args, **kwargs):
        raise AssertionError("the upload was written to a temporary file")

    for name in ("NamedTemporaryFile", "TemporaryFile", "SpooledTemporaryFile", "mkstemp"):
        monkeypatch.setattr(tempfile, name, no_temporary_file)
    photo = trained.photos[0]

    async def decode_both() -> list[Prepared]:
        return list(await asyncio.gather(decoder(Upload(photo.read_bytes(), 2)), decoder(Upload(b"no pixels here", 1))))

    prepared, junk = asyncio.run(decode_both())
    assert prepared.top_k == 2 and torch.equal(torch.from_numpy(prepared.image), model.preprocess(photo))
    assert junk == Prepared(Unusable("not an image (format not recognised)"), 1)
    api = GemLitAPI(trained.checkpoint, model_id={}, max_batch_size=8)
    image, top_k, cam = api.decode_request(prepared)
    assert top_k == 2 and not cam and torch.equal(image, model.preprocess(photo))
    assert api.decode_request(junk) == (Unusable("not an image (format not recognised)"), 1, False)


def test_with_no_decode_threads_the_worker_decodes_the_bytes(trained):
    """``serve --decode_threads 0``: the HTTP process hands the bytes on, the model worker decodes them alike."""
    from gem_lightning.serving.api import WorkerDecoder

    model = load_model(trained.checkpoint)
    photo = trained.photos[0]
    handed_on = asyncio.run(UploadDecoder(model.preprocessing, threads=0)(Upload(photo.read_bytes(), 2)))
    assert handed_on.image == photo.read_bytes()
    api = GemLitAPI(trained.checkpoint, model_id={}, max_batch_size=8)
    api.decoder = WorkerDecoder(model.preprocessing)  # what setup() makes
    image, top_k, _ = api.decode_request(handed_on)
    assert top_k == 2 and torch.equal(image, model.preprocess(photo))
    assert api.decode_request(Prepared(b"no pixels here", 1))[0] == Unusable("not an image (format not recognised)")

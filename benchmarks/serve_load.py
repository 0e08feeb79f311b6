"""Load on ``python main.py serve``: throughput and latency at several concurrencies, batching on and off.

Run from the repository root (prints figures; not a test; loopback only, bounded request counts):

    python benchmarks/serve_load.py [--data-dir ../shared/datasets/gemstones] [--ckpt CKPT]
        [--requests N] [--concurrency 1 8 32] [--max-batch-size 16] [--threads 1] [--memory-requests 10000]
        [--runtime torch|onnxruntime|onnxruntime-int8] [--int8-images DIR] [--batching on off]

Photos: every file of ``<data-dir>/test`` (440 real photos), read into memory once and sent in
turn as raw ``image/jpeg`` bodies. Model: ``--ckpt``, else an untrained ``GemClassifier`` with
``configs/gemstones.yaml``'s network (96 px, auto-crop) saved to a temporary checkpoint (speed
does not depend on the weights).

1. Baseline, in this process: ``load_model(ckpt).classify_many(photos, batch_size=32)`` over the
   same photos (decoding included, as the server decodes each upload): images/s, measured before
   and after the server runs; the summary's ratios are to the mean of the two.
2. For batching on (``--max_batch_size``) and off (1), one ``serve`` process on a free
   127.0.0.1 port; for each concurrency C, C client threads (one keep-alive connection each)
   send ``--requests`` requests in all (default: one per photo, so the same photos as the
   baseline): requests/s, p50/p95/p99 latency, failed requests, and the ratio of requests/s to
   the baseline's images/s. ``--threads`` (default 1) torch threads in the
   server's worker and in the baseline alike.
3. Memory, batching on: ``--memory-requests`` requests at concurrency 8; the server's resident
   memory (main, HTTP and worker processes together, from /proc) at request 1,000 and at the end.

``--runtime`` runs the server (``serve --runtime``) and the in-process baseline (``load_model(ckpt,
runtime=...)``) alike; its ONNX model is made once before anything is timed (int8: calibrated on
``--int8-images``). ``--batching on`` (or ``off``) runs one of the two servers only;
``--decode-threads`` is ``serve --decode_threads`` (0: uploads decoded in the model worker).

``load`` is the 1-minute load average after each row (other work on the machine shows there).

The client threads share the machine with the server; on a small machine they take a share of
the CPU the server would otherwise have, so the ratios are lower bounds.
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import os
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]  # the /proc walk lives with the tests' server helpers

from serving import descendants  # noqa: E402

from gem_lightning.inference.api import load_model  # noqa: E402
from gem_lightning.inference.runtime import RUNTIMES, prepare  # noqa: E402
from gem_lightning.training.module import GemClassifier  # noqa: E402

STARTUP_S = 300


def untrained_checkpoint(data_dir: Path, out: Path) -> Path:
    """``configs/gemstones.yaml``'s network with random weights, for the classes of ``data_dir``."""
    from lightning.pytorch import Trainer

    config = yaml.safe_load((REPO / "configs" / "gemstones.yaml").read_text())
    settings = {k: v for k, v in config["model"].items() if k not in ("optimizer", "lr_scheduler")}
    names = sorted(p.name for p in (data_dir / "train").iterdir() if p.is_dir())
    preprocessing = {"autocrop": config["data"]["autocrop"], "background": [255, 255, 255]}
    model = GemClassifier(names, config["data"]["image_size"], preprocessing=preprocessing, **settings)
    trainer = Trainer(
        accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False
    )
    trainer.strategy.connect(model)
    trainer.save_checkpoint(out)
    return out


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServeProcess:
    """``python main.py serve`` on a free loopback port, stopped with SIGTERM."""

    def __init__(
        self, ckpt: Path, max_batch_size: int, threads: int, log: Path, runtime: str = "torch", decode_threads: int | None = None
    ) -> None:
        self.port = free_port()
        command = [sys.executable, str(REPO / "main.py"), "serve", "--ckpt_path", str(ckpt), "--port", str(self.port),
                   "--max_batch_size", str(max_batch_size), "--batch_timeout", "0.005", "--threads", str(threads),
                   "--runtime", runtime] + ([] if decode_threads is None else ["--decode_threads", str(decode_threads)])  # fmt: skip
        self.log = log
        with log.open("wb") as output:
            self.process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, cwd=REPO)
        deadline = time.monotonic() + STARTUP_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"serve exited:\n{log.read_text()}")
            try:
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                connection.request("GET", "/health")
                if connection.getresponse().read() == b"ok":
                    return
            except OSError:
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"serve not ready after {STARTUP_S} s:\n{log.read_text()}")

    def rss_bytes(self) -> int:
        """Resident memory of the server's whole process tree."""
        total = 0
        for pid in [self.process.pid, *descendants(self.process.pid)]:
            try:
                status = Path(f"/proc/{pid}/status").read_text()
                total += int(next(line for line in status.splitlines() if line.startswith("VmRSS:")).split()[1]) * 1024
            except (OSError, StopIteration):
                continue
        return total

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()


def send_load(port: int, photos: list[bytes], requests: int, concurrency: int, on_done=None) -> dict:
    """``requests`` POSTs from ``concurrency`` threads; latencies in seconds and the failures."""
    counter = itertools.count()
    latencies: list[float] = []
    failures: list[str] = []
    lock = threading.Lock()

    def client() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        while (i := next(counter)) < requests:
            start = time.perf_counter()
            try:
                connection.request("POST", "/predict", photos[i % len(photos)], {"Content-Type": "image/jpeg"})
                response = connection.getresponse()
                body = response.read()
                ok = response.status == 200
            except (OSError, http.client.HTTPException) as error:
                ok, body = False, repr(error).encode()
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            elapsed = time.perf_counter() - start
            with lock:
                latencies.append(elapsed)
                if not ok:
                    failures.append(body[:200].decode(errors="replace"))
                if on_done is not None:
                    on_done(len(latencies))
        connection.close()

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        for future in [pool.submit(client) for _ in range(concurrency)]:
            future.result()
    wall = time.perf_counter() - start
    return {"wall": wall, "latencies": latencies, "failures": failures}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "datasets" / "gemstones")
    parser.add_argument("--ckpt", type=Path, default=None)
    parser.add_argument("--requests", type=int, default=None, help="requests per (batching, concurrency); default: one per photo")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1, help="torch threads, in the server's worker and in the baseline alike")
    parser.add_argument("--memory-requests", type=int, default=10_000, help="0 skips the memory run")
    parser.add_argument("--runtime", choices=RUNTIMES, default="torch", help="of the server and the in-process baseline alike")
    parser.add_argument("--int8-images", default=None, help="onnxruntime-int8's calibration photos (needed once per checkpoint)")
    parser.add_argument("--batching", nargs="+", choices=("on", "off"), default=["on", "off"], help="which servers to run")
    parser.add_argument("--decode-threads", type=int, default=None, help="serve --decode_threads (0: decode in the model worker)")
    args = parser.parse_args()

    paths = sorted(p for p in (args.data_dir / "test").rglob("*") if p.is_file() and not p.name.startswith("."))
    if not paths:
        raise SystemExit(f"no photos under {args.data_dir / 'test'}")
    photos = [p.read_bytes() for p in paths]
    args.requests = args.requests or len(photos)
    work = Path(tempfile.mkdtemp(prefix="serve-load-"))
    ckpt = args.ckpt or untrained_checkpoint(args.data_dir, work / "untrained.ckpt")
    print(f"{len(paths)} photos from {args.data_dir / 'test'}; model {ckpt}; runtime {args.runtime}; {os.cpu_count()} CPUs; "
          f"torch threads {args.threads} (server worker and baseline); "
          f"client: up to {max(args.concurrency)} threads on the same machine")  # fmt: skip
    prepare(ckpt, args.runtime, args.int8_images)  # the ONNX model made once, before anything is timed

    torch.set_num_threads(args.threads)
    before = in_process_rate(ckpt, paths, args.runtime)
    print(f"\nin-process classify_many (batch 32): {before:.1f} images/s (1-min load average {os.getloadavg()[0]:.1f}); "
          "measured again at the end; the ratio column is to this first figure\n")  # fmt: skip
    print(
        f"{'batching':<12} {'conc.':>5} {'requests':>8} {'req/s':>7} {'ratio':>6} "
        f"{'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7} {'failed':>6} {'load':>5}"
    )

    rows = []
    for batch_size in [size for size, name in ((args.max_batch_size, "on"), (1, "off")) if name in args.batching]:
        label = f"on (<= {batch_size})" if batch_size > 1 else "off"
        server = ServeProcess(ckpt, batch_size, args.threads, work / f"serve-{batch_size}.log", args.runtime, args.decode_threads)
        try:
            send_load(server.port, photos, 32, min(8, max(args.concurrency)))  # warm-up
            for concurrency in args.concurrency:
                result = send_load(server.port, photos, args.requests, concurrency)
                rate = len(result["latencies"]) / result["wall"]
                ms = [1000 * percentile(result["latencies"], q) for q in (50, 95, 99)]
                rows.append((label, concurrency, rate, ms, len(result["failures"]), os.getloadavg()[0]))
                print(f"{label:<12} {concurrency:>5} {args.requests:>8} {rate:>7.1f} {rate / before:>6.2f} "
                      f"{ms[0]:>7.1f} {ms[1]:>7.1f} {ms[2]:>7.1f} {len(result['failures']):>6} {rows[-1][-1]:>5.1f}",
                      flush=True)  # fmt: skip
                for failure in result["failures"][:3]:
                    print(f"    failed: {failure}")
            if batch_size > 1 and args.memory_requests:
                marks: dict[int, int] = {}

                def sample(done: int, marks: dict[int, int] = marks, server: ServeProcess = server) -> None:
                    if done in (1_000, args.memory_requests):
                        marks[done] = server.rss_bytes()

                result = send_load(server.port, photos, args.memory_requests, 8, on_done=sample)
                first, last = marks.get(1_000), marks.get(args.memory_requests)
                line = f"\nmemory (batching on, concurrency 8, {args.memory_requests} requests, {len(result['failures'])} failed): "
                if first and last:
                    line += (
                        f"RSS {first / 2**20:.0f} MiB at request 1,000, {last / 2**20:.0f} MiB at request {args.memory_requests:,} "
                        f"({100 * (last / first - 1):+.1f} %)"
                    )
                print(line + f"; {len(result['latencies']) / result['wall']:.1f} req/s", flush=True)
        finally:
            server.stop()

    after = in_process_rate(ckpt, paths, args.runtime)
    baseline = (before + after) / 2
    print(f"\nin-process classify_many again: {after:.1f} images/s (load {os.getloadavg()[0]:.1f}); mean {baseline:.1f}. "
          "Ratios to the mean:")  # fmt: skip
    for label, concurrency, rate, *_ in rows:
        print(f"  batching {label:<11} concurrency {concurrency:>2}: {rate:6.1f} req/s = {rate / baseline:.2f}x in-process")


def in_process_rate(ckpt: Path, paths: list[Path], runtime: str = "torch") -> float:
    """Images/s of ``load_model(ckpt, runtime=runtime).classify_many(paths, batch_size=32)`` after one warm-up batch."""
    model = load_model(ckpt, runtime=runtime)
    model.classify_many(paths[:32])
    start = time.perf_counter()
    model.classify_many(paths, batch_size=32)
    return len(paths) / (time.perf_counter() - start)


if __name__ == "__main__":
    main()

"""Soak ``python main.py serve``: steady load, malformed requests, the model worker SIGKILLed on a schedule.

Run from the repository root (prints figures; not a test; loopback only):

    python benchmarks/serve_soak.py [--minutes 30] [--kill_every 10] [--concurrency 8] [--malformed 0.01]
        [--data-dir ../shared/datasets/gemstones] [--ckpt CKPT] [--runtime torch] [--threads 1]
        [--rss_from 5] [--window 5]

For ``--minutes`` minutes, ``--concurrency`` client threads (one keep-alive connection each) post
the ``test/`` photos in turn; a share ``--malformed`` of the requests are malformed instead (empty
body, bad JSON, bad base64, not an image, a truncated JPEG, a bad ``top_k``, a wrong content type)
and must get a 4xx. Every ``--kill_every`` minutes the model worker (the spawned process among the
server's descendants, as ``tests/test_serve_resilience.py`` finds it) gets SIGKILL, as the OOM
killer would send it; the server must restart it.

Reported: every answer other than 200 to a well-formed request, split into those in flight at a kill
(sent before it, answered after it: a 503 is the designed answer) and the others (there should be
none); malformed requests answered otherwise than 4xx; each kill and how long until ``/health``
said ok again; the resident memory of the server's whole process tree (sampled every 5 s) from
minute ``--rss_from`` on, against its value then (pass: within 10 %; samples from a kill until 15 s
after the new worker is ready are left out: a worker gone or loading is not memory saved); p50/p99 latency of
well-formed requests per ``--window`` minutes. Short tries: ``--minutes 3 --kill_every 1
--rss_from 0.5 --window 1``. Exit status 1 when a check fails.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import os
import random
import signal
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from serve_load import ServeProcess, descendants, percentile, untrained_checkpoint  # noqa: E402

RSS_TOLERANCE = 0.10
SETTLE_S = 15.0
"""Memory samples this long after a restarted worker is ready are left out (it is still warming up)."""


@dataclass
class Sent:
    """One request: when it was sent and answered (monotonic seconds from the start), its status, whether well-formed."""

    start: float
    end: float
    status: int | None  # None: no answer (connection error or timeout)
    well_formed: bool
    detail: str = ""


def malformed_requests(photo: bytes) -> list[tuple[str, bytes, str]]:
    """``(query, body, content type)`` of requests the server must refuse with a 4xx."""
    return [
        ("", b"", "image/jpeg"),  # empty body: 400
        ("", b"{not json", "application/json"),  # 400
        ("", b'{"image": "***"}', "application/json"),  # bad base64: 400
        ("", b"these bytes are no image", "image/jpeg"),  # 422
        ("", photo[: max(1, len(photo) // 3)], "image/jpeg"),  # truncated: 422
        ("?top_k=0", photo, "image/jpeg"),  # 400
        ("", photo, "text/plain"),  # 415
        ("", b'{"image": "' + base64.b64encode(b"GIF89a junk") + b'"}', "application/json"),  # 422
    ]


class Soak:
    """The load, the killer and the memory sampler around one running server."""

    def __init__(self, server: ServeProcess, photos: list[bytes], args: argparse.Namespace) -> None:
        self.server = server
        self.photos = photos
        self.args = args
        self.t0 = time.monotonic()
        self.deadline = self.t0 + 60 * args.minutes
        self.sent: list[Sent] = []
        self.kills: list[tuple[float, int, float | None]] = []  # (time, pid, seconds until /health ok)
        self.rss: list[tuple[float, int]] = []
        self.lock = threading.Lock()

    def now(self) -> float:
        return time.monotonic() - self.t0

    def client(self, seed: int) -> None:
        rng = random.Random(seed)
        connection = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=60)
        i = seed
        while time.monotonic() < self.deadline:
            i += self.args.concurrency
            photo = self.photos[i % len(self.photos)]
            well_formed = rng.random() >= self.args.malformed
            query, body, content_type = ("", photo, "image/jpeg") if well_formed else rng.choice(malformed_requests(photo))
            start = self.now()
            try:
                connection.request("POST", f"/predict{query}", body, {"Content-Type": content_type})
                response = connection.getresponse()
                answer = response.read()
                status, detail = response.status, ("" if response.status == 200 else answer[:160].decode(errors="replace"))
            except (OSError, http.client.HTTPException) as error:
                status, detail = None, repr(error)
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=60)
            with self.lock:
                self.sent.append(Sent(start, self.now(), status, well_formed, detail))
        connection.close()

    def killer(self) -> None:
        """SIGKILL the model worker every ``kill_every`` minutes; time how long until ``/health`` is ok."""
        next_kill = self.t0 + 60 * self.args.kill_every
        while next_kill < self.deadline - 5:
            time.sleep(max(0.0, next_kill - time.monotonic()))
            workers = model_workers(self.server.process.pid)
            if not workers:
                print(f"  {self.now():7.1f} s: no model worker found to kill", flush=True)
            for pid in workers:
                killed_at = self.now()
                os.kill(pid, signal.SIGKILL)
                back = self.wait_healthy(killed_at)
                self.kills.append((killed_at, pid, back))
                print(
                    f"  {killed_at:7.1f} s: SIGKILL worker {pid}; /health ok again after {back if back is None else round(back, 1)} s",
                    flush=True,
                )
            next_kill += 60 * self.args.kill_every

    def wait_healthy(self, since: float) -> float | None:
        time.sleep(0.5)  # the supervisor polls every 0.25 s
        while time.monotonic() < self.deadline:
            try:
                connection = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=5)
                connection.request("GET", "/health")
                if connection.getresponse().read() == b"ok":
                    return self.now() - since
            except OSError:
                pass
            time.sleep(0.25)
        return None

    def sampler(self) -> None:
        while time.monotonic() < self.deadline:
            self.rss.append((self.now(), self.server.rss_bytes()))
            time.sleep(5)

    def run(self) -> None:
        threads = [threading.Thread(target=self.client, args=(seed,)) for seed in range(self.args.concurrency)]
        threads += [threading.Thread(target=self.killer, daemon=True), threading.Thread(target=self.sampler, daemon=True)]
        for thread in threads:
            thread.start()
        for thread in threads[: self.args.concurrency]:
            thread.join()


def model_workers(pid: int) -> list[int]:
    """The server's live model workers: LitServe spawns them (``spawn_main`` in their command line)."""
    found = []
    for child in descendants(pid):
        try:
            command = Path(f"/proc/{child}/cmdline").read_bytes()
            state = Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if b"spawn_main" in command and state != "Z":
            found.append(child)
    return found


def restarting(t: float, kills: list[tuple[float, int, float | None]]) -> bool:
    """Whether ``t`` falls between a kill and :data:`SETTLE_S` after ``/health`` said ok again (a worker
    that is gone or still loading would make the memory look smaller than it is)."""
    return any(k <= t <= k + (back if back is not None else float("inf")) + SETTLE_S for k, _, back in kills)


def report(soak: Soak, args: argparse.Namespace) -> bool:
    """Print the figures; True when every check passes."""
    sent = soak.sent
    good = [s for s in sent if s.well_formed]
    bad = [s for s in sent if not s.well_formed]
    at_kill = [s for s in good if s.status != 200 and any(s.start <= k <= s.end for k, _, _ in soak.kills)]
    other = [s for s in good if s.status != 200 and s not in at_kill]
    wrong_4xx = [s for s in bad if s.status is None or not 400 <= s.status < 500]
    duration = max((s.end for s in sent), default=1.0)
    print(
        f"\n{len(sent)} requests in {duration / 60:.1f} min ({len(sent) / duration:.1f} req/s): "
        f"{len(good)} well-formed, {len(bad)} malformed"
    )
    print(
        f"kills: {len(soak.kills)}; /health ok again after "
        + ", ".join(f"{b:.1f} s" if b is not None else "never" for _, _, b in soak.kills)
    )
    print(f"well-formed answered otherwise than 200: {len(at_kill) + len(other)} "
          f"({len(at_kill)} in flight at a kill, {len(other)} other)")  # fmt: skip
    for s in (at_kill + other)[:5]:
        print(f"    {s.start:7.1f}-{s.end:7.1f} s: {s.status} {s.detail[:120]}")
    print(f"malformed answered otherwise than 4xx: {len(wrong_4xx)} of {len(bad)}")
    for s in wrong_4xx[:5]:
        print(f"    {s.start:7.1f} s: {s.status} {s.detail[:120]}")

    window = [(t, rss) for t, rss in soak.rss if t >= 60 * args.rss_from and not restarting(t, soak.kills)]
    rss_ok = True
    if window:
        first, low, high, last = window[0][1], min(r for _, r in window), max(r for _, r in window), window[-1][1]
        drift = max(abs(high / first - 1), abs(low / first - 1))
        rss_ok = drift <= RSS_TOLERANCE
        print(f"RSS of the server's process tree from minute {args.rss_from:g}: {first / 2**20:.0f} MiB then, min {low / 2**20:.0f}, "
              f"max {high / 2**20:.0f}, last {last / 2**20:.0f} MiB: largest change {100 * drift:.1f} % "
              f"({'within' if rss_ok else 'beyond'} {100 * RSS_TOLERANCE:.0f} %)")  # fmt: skip
    print(f"\nlatency of well-formed requests per {args.window:g} min:")
    print(f"{'minutes':>11} {'requests':>8} {'req/s':>6} {'p50 ms':>8} {'p99 ms':>8} {'non-200':>7}")
    step = 60 * args.window
    for start in range(0, int(duration) + 1, int(step)):
        chunk = [s for s in good if start <= s.start < start + step]
        if chunk:
            latencies = [s.end - s.start for s in chunk]
            print(f"{start / 60:5.1f}-{(start + step) / 60:<5.1f} {len(chunk):>8} {len(chunk) / step:>6.1f} "
                  f"{1000 * percentile(latencies, 50):>8.1f} {1000 * percentile(latencies, 99):>8.1f} "
                  f"{sum(s.status != 200 for s in chunk):>7}")  # fmt: skip
    return not other and not wrong_4xx and rss_ok and all(b is not None for _, _, b in soak.kills)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--kill_every", type=float, default=10.0, help="minutes between SIGKILLs of the model worker")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--malformed", type=float, default=0.01, help="share of malformed requests")
    parser.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "datasets" / "gemstones")
    parser.add_argument("--ckpt", type=Path, default=None, help="default: configs/gemstones.yaml's network, untrained")
    parser.add_argument("--runtime", default="torch")
    parser.add_argument("--threads", type=int, default=1, help="torch threads in the model worker")
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--rss_from", type=float, default=5.0, help="minute from which RSS must stay within 10 %% of its value then")
    parser.add_argument("--window", type=float, default=5.0, help="minutes per latency row")
    args = parser.parse_args()

    paths = sorted(p for p in (args.data_dir / "test").rglob("*") if p.is_file() and not p.name.startswith("."))
    if not paths:
        raise SystemExit(f"no photos under {args.data_dir / 'test'}")
    photos = [p.read_bytes() for p in paths]
    work = Path(tempfile.mkdtemp(prefix="serve-soak-"))
    ckpt = args.ckpt or untrained_checkpoint(args.data_dir, work / "untrained.ckpt")
    print(f"soak: {args.minutes:g} min, concurrency {args.concurrency}, {100 * args.malformed:g} % malformed, worker SIGKILLed every "
          f"{args.kill_every:g} min; {len(photos)} photos; model {ckpt}; runtime {args.runtime}; {os.cpu_count()} CPUs; "
          f"log {work / 'serve.log'}")  # fmt: skip
    server = ServeProcess(ckpt, args.max_batch_size, args.threads, work / "serve.log", args.runtime)
    try:
        soak = Soak(server, photos, args)
        soak.run()
    finally:
        server.stop()
    passed = report(soak, args)
    print(f"\nserve exit status after SIGTERM: {server.process.returncode}; checks {'passed' if passed else 'FAILED'}")
    return 0 if passed and server.process.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

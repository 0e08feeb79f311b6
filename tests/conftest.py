"""Shared fixtures: tiny image folders made in temp dirs, and the real gemstones folder if present."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
GEMSTONES = REPO.parent / "shared" / "datasets" / "gemstones"

requires_gemstones = pytest.mark.skipif(
    not (GEMSTONES / "train").is_dir(),
    reason=f"the real gemstones photos are not at {GEMSTONES} (they live in ../shared/datasets/gemstones)",
)


def write_image(path: Path, colour: tuple[int, int, int], size: int = 40, seed: int = 0) -> Path:
    """A small noisy JPEG of a colour, distinct per seed."""
    rng = np.random.default_rng(seed)
    pixels = np.clip(np.array(colour) + rng.normal(0, 20, (size, size, 3)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format="JPEG" if path.suffix.lower() in (".jpg", ".jpeg") else None)
    return path


COLOURS = {"Blue Stone": (30, 60, 220), "Green Stone": (30, 200, 60), "Red Stone": (220, 30, 40)}


def make_dataset(root: Path, train_per_class: int = 10, test_per_class: int = 3, classes=COLOURS) -> Path:
    """``root/train/<Class>/*.jpg`` and ``root/test/<Class>/*.jpg``: colour-coded, learnable classes."""
    for split, count in (("train", train_per_class), ("test", test_per_class)):
        for c, (name, colour) in enumerate(classes.items()):
            for i in range(count):
                write_image(root / split / name / f"{name.lower()} {i}.jpg", colour, seed=hash((split, c, i)) % 2**32)
    return root


@pytest.fixture
def tiny_dataset(tmp_path: Path) -> Path:
    return make_dataset(tmp_path / "gems")


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Keep every test's decoded-image cache in its own temp dir, never in ~/.cache."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("GEM_LIGHTNING_CACHE", str(cache))
    return cache


def datamodule_kwargs(cache_root: Path, *, num_workers: int = 0, **overrides) -> dict:
    from gem_lightning.data.cache import Cache
    from gem_lightning.data.loader import Loader

    kwargs = dict(
        image_size=32, batch_size=8, loader=Loader(num_workers=num_workers), cache=Cache(dir=str(cache_root)), val_fraction=0.3, seed=1
    )
    kwargs.update(overrides)
    return kwargs


@pytest.fixture
def cpu_env(monkeypatch: pytest.MonkeyPatch) -> dict:
    """Environment for CLI subprocesses: this repo importable, few threads."""
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="2", PYTHONWARNINGS="ignore")
    return env


def sigkill_all(pids) -> None:
    """SIGKILL every process of ``pids`` at once, as a machine failure would; gone ones are skipped."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

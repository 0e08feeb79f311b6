"""Helpers shared by the tests: a tiny network, running the command line, reading its outputs."""

from __future__ import annotations

import csv
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

from conftest import datamodule_kwargs, make_dataset
from warm_cli import run_main

from gem_lightning.models import VGGSpec

REPO = Path(__file__).resolve().parents[1]

TINY_NETWORK = VGGSpec(channels=(8, 16), pools=("max", "max"), hidden_units=16)
"""A two-block VGG that trains in well under a second per epoch on 32 px images."""

TINY_MODEL = ["--model.network.channels", "[8, 16]", "--model.network.pools", "[max, max]", "--model.network.hidden_units", "16"]
"""``TINY_NETWORK`` as command-line options."""


def run_cli(*args: str, env: dict, cwd: Path, check: bool = True, timeout: float = 300, fresh: bool = False) -> subprocess.CompletedProcess:
    """``python main.py <args>`` as a process of its own, forked warm (:mod:`warm_cli`: its imports are paid
    once per test session), or with ``fresh`` a new interpreter (for settings libraries read when imported,
    such as the Hub client's ``HF_HOME``); with ``check``, fail the test with its output when it fails."""
    if fresh:
        command = [sys.executable, str(REPO / "main.py"), *map(str, args)]
        result = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    else:
        result = run_main(list(args), env=env, cwd=cwd, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"main.py {' '.join(map(str, args))} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    return result


def read_metrics(folder: Path) -> dict[str, float]:
    """The last logged value of every column of the one CSVLogger ``metrics.csv`` under ``folder``."""
    files = sorted(folder.rglob("metrics.csv"))
    assert len(files) == 1, f"expected exactly one metrics.csv under {folder}, found {[str(f) for f in files]}"
    values: dict[str, float] = {}
    with files[0].open() as file:
        for row in csv.DictReader(file):
            values.update({key: float(value) for key, value in row.items() if value != ""})
    return values


def free_port() -> int:
    """A TCP port free on loopback now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def train_tiny(root: Path, *, train_per_class: int = 10, test_per_class: int = 3, **model_kwargs) -> SimpleNamespace:
    """``TINY_NETWORK`` trained for one epoch on colour-coded classes made under ``root``, saved as
    ``root/model.ckpt``; ``model_kwargs`` go to ``GemClassifier`` (e.g. ``tta``)."""
    from lightning.pytorch import Trainer, seed_everything

    from gem_lightning.data.datamodule import GemDataModule
    from gem_lightning.training.module import GemClassifier

    seed_everything(0)
    data_dir = make_dataset(root / "gems", train_per_class=train_per_class, test_per_class=test_per_class)
    datamodule = GemDataModule(str(data_dir), **datamodule_kwargs(root / "cache"))
    model = GemClassifier(datamodule.class_names, 32, network=TINY_NETWORK, **model_kwargs)
    trainer = Trainer(
        max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False
    )
    trainer.fit(model, datamodule=datamodule)
    checkpoint = root / "model.ckpt"
    trainer.save_checkpoint(checkpoint)
    photos = sorted((data_dir / "test").rglob("*.jpg"))
    return SimpleNamespace(root=root, checkpoint=checkpoint, photos=photos, test_dir=data_dir / "test")


LABEL_COLOURS = {"Blue": (30, 60, 220), "Green": (30, 200, 60), "Red": (220, 30, 40), "Yellow": (230, 210, 30)}
"""The classes of :func:`make_labels_file`: a photo shows one to three of these colours."""


def make_labels_file(root: Path, *, train: int = 80, test: int = 25, seed: int = 0) -> Path:
    """A multi-label set under ``root``: 40 px photos with one to three coloured squares (one quadrant
    each, on white), labelled with their colours in ``root/labels.csv`` (``path,labels,split``)."""
    import random

    from PIL import Image

    rng = random.Random(seed)
    names = sorted(LABEL_COLOURS)
    rows = []
    for split, count in (("train", train), ("test", test)):
        for number in range(count):
            chosen = sorted(rng.sample(names, rng.randint(1, 3)))
            image = Image.new("RGB", (40, 40), (255, 255, 255))
            for name, quadrant in zip(chosen, rng.sample(range(4), len(chosen))):
                x, y = 20 * (quadrant % 2), 20 * (quadrant // 2)
                image.paste(tuple(c + rng.randint(-15, 15) for c in LABEL_COLOURS[name]), (x + 2, y + 2, x + 18, y + 18))
            path = root / "photos" / split / f"{number:03d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            image.save(path)
            rows.append([path.relative_to(root).as_posix(), ";".join(chosen), split])
    csv_path = root / "labels.csv"
    with csv_path.open("w", newline="") as file:
        csv.writer(file).writerows([["path", "labels", "split"], *rows])
    return csv_path

"""Helpers shared by the tests: a tiny network, running the command line, reading its outputs."""

from __future__ import annotations

import csv
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

from conftest import datamodule_kwargs, make_dataset

from gem_lightning.models import VGGSpec

REPO = Path(__file__).resolve().parents[1]

TINY_NETWORK = VGGSpec(channels=(8, 16), pools=("max", "max"), hidden_units=16)
"""A two-block VGG that trains in well under a second per epoch on 32 px images."""

TINY_MODEL = ["--model.network.channels", "[8, 16]", "--model.network.pools", "[max, max]", "--model.network.hidden_units", "16"]
"""``TINY_NETWORK`` as command-line options."""


def run_cli(*args: str, env: dict, cwd: Path, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python main.py <args>`` in a subprocess; with ``check``, fail the test with its output when it fails."""
    result = subprocess.run(
        [sys.executable, str(REPO / "main.py"), *map(str, args)], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout
    )
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

"""Every mistake a user can make, through the real command line: one row per mistake.

Each row builds its inputs in a temp folder, runs ``python main.py ...`` in a process of its own
(forked warm: :mod:`warm_cli`) and checks that it ends the same way: exit status 2, an ``error:``
line on stderr naming the file or setting, no traceback, and every file that existed before the
run byte-for-byte unchanged. The faults
(disk full during a checkpoint save, Ctrl-C during ``fit``) have tests of their own below.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import REPO, make_dataset, write_image
from helpers import TINY_MODEL
from warm_cli import run_main, start_main

pytestmark = pytest.mark.slow  # each row starts the CLI: seconds of imports


def cli(*args: str, env: dict, cwd: Path, timeout: float = 900) -> subprocess.CompletedProcess:
    return run_main(list(args), env=env, cwd=cwd, timeout=timeout)


def common(root: Path) -> list[str]:
    return ["--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false",
            "--trainer.logger.init_args.save_dir", str(root / "runs"),
            "--data.image_size", "32", "--data.batch_size", "8", "--data.loader.num_workers", "0", *TINY_MODEL]  # fmt: skip


def snapshot(*roots: Path) -> dict[Path, str]:
    """Digest of every file under ``roots``: what must survive a failed run unchanged."""
    return {
        path: hashlib.sha256(path.read_bytes()).hexdigest()
        for root in roots
        for path in root.rglob("*")
        if path.is_file() and not path.is_symlink()
    }


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict:
    cache = tmp_path_factory.mktemp("cache")
    return dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", GEM_LIGHTNING_CACHE=str(cache))


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, env: dict) -> SimpleNamespace:
    """A tiny dataset and a checkpoint trained on it by ``fit`` (a few steps)."""
    root = tmp_path_factory.mktemp("trained")
    data = make_dataset(root / "gems", train_per_class=6, test_per_class=2)
    result = cli("fit", *common(root), "--data.data_dir", data, "--trainer.max_steps", "2", env=env, cwd=root)
    assert result.returncode == 0, result.stderr[-3000:]
    [ckpt] = root.glob("runs/gem/version_0/checkpoints/last.ckpt")
    return SimpleNamespace(root=root, data=data, ckpt=ckpt)


# Inputs the rows build ---------------------------------------------------------------------------


def tweaked_checkpoint(trained, path: Path, change: Callable[[dict], None]) -> Path:
    checkpoint = torch.load(trained.ckpt, map_location="cpu", weights_only=True)
    change(checkpoint)
    torch.save(checkpoint, path)
    return path


def drop_class_names(checkpoint: dict) -> None:
    del checkpoint["hyper_parameters"]["class_names"]


def reshape_a_weight(checkpoint: dict) -> None:
    key = next(k for k in checkpoint["state_dict"] if k.endswith("weight"))
    checkpoint["state_dict"][key] = torch.zeros(3, 3)


def other_modules_checkpoint(path: Path) -> Path:
    torch.save(
        {
            "state_dict": {"encoder.weight": torch.zeros(4, 4)},
            "pytorch-lightning_version": "2.6.0",
            "hyper_parameters": {"hidden": 4},
            "epoch": 0,
            "global_step": 1,
        },
        path,
    )
    return path


def dataset(root: Path, classes: dict[str, int]) -> Path:
    """``root/train/<class>/`` with the given number of small images each."""
    for c, (name, count) in enumerate(classes.items()):
        (root / "train" / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            write_image(root / "train" / name / f"{i}.jpg", (40 * c, 100, 200 - 40 * c), seed=c * 100 + i)
    return root


def with_looping_class_link(root: Path) -> Path:
    dataset(root, {"Ruby": 4, "Jade": 4})
    (root / "train" / "Loop").symlink_to("Loop")
    return root


def with_looping_link_inside_a_class(root: Path) -> Path:
    dataset(root, {"Ruby": 4, "Jade": 4})
    (root / "train" / "Ruby" / "cycle").symlink_to("cycle")
    return root


def no_images(root: Path) -> Path:
    for name in ("Ruby", "Jade"):
        (root / "train" / name).mkdir(parents=True)
        (root / "train" / name / "notes.txt").write_text("not a photo")
    return root


def a_file(path: Path) -> Path:
    path.write_text("I am a file")
    return path


def empty_file(path: Path) -> Path:
    path.write_bytes(b"")
    return path


def train_is_a_file(root: Path) -> Path:
    root.mkdir()
    (root / "train").write_text("not a folder")
    return root


def not_a_dataset(root: Path) -> Path:
    root.mkdir()
    (root / "notes.txt").write_text("my notes, keep them")
    return root


def earlier_predictions(path: Path) -> Path:
    path.write_text("path,prediction\nold.jpg,Ruby\n")
    return path


def bad_yaml(path: Path) -> Path:
    path.write_text("data:\n  batch_size: [1\n  image_size: 32\n")
    return path


# The table ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Mistake:
    """``args(trained, tmp)`` builds the inputs and returns the command; ``names``: what stderr must say."""

    id: str
    args: Callable[[SimpleNamespace, Path], list]
    names: tuple[str, ...]
    needs_cpu_only: bool = False


def predict(ckpt, trained, *extra) -> list:
    return ["predict", "--ckpt_path", ckpt, "--data.predict_path", trained.data / "test",
            "--trainer.logger.init_args.save_dir", trained.root / "predict-runs", *extra]  # fmt: skip


def fit(t: SimpleNamespace, tmp: Path, data_dir, *extra) -> list:  # noqa: ARG001 (rows read alike)
    return ["fit", *common(tmp), "--data.data_dir", data_dir, "--trainer.max_steps", "1", *extra]


MISTAKES = [
    # checkpoints
    Mistake("checkpoint missing", lambda t, tmp: predict(tmp / "missing.ckpt", t), ("missing.ckpt", "does not exist")),
    Mistake("checkpoint empty", lambda t, tmp: predict(empty_file(tmp / "e.ckpt"), t), ("e.ckpt", "empty")),
    Mistake("checkpoint truncated", lambda t, tmp: predict(truncated(t, tmp / "cut.ckpt"), t), ("cut.ckpt", "truncated")),
    Mistake("checkpoint is a text file", lambda t, tmp: predict(a_file(tmp / "notes.ckpt"), t), ("notes.ckpt", "not a checkpoint")),
    Mistake("checkpoint is a folder", lambda t, tmp: predict(t.data, t), ("gems", "is a folder")),
    Mistake(
        "checkpoint is a bare state dict",
        lambda t, tmp: predict(bare_state_dict(t, tmp / "weights.ckpt"), t),
        ("weights.ckpt", "not a Lightning checkpoint"),
    ),
    Mistake(
        "checkpoint of another LightningModule",
        lambda t, tmp: predict(other_modules_checkpoint(tmp / "other.ckpt"), t),
        ("other.ckpt", "another model"),
    ),
    Mistake(
        "checkpoint lacks needed hyperparameters",
        lambda t, tmp: predict(tweaked_checkpoint(t, tmp / "old.ckpt", drop_class_names), t),
        ("old.ckpt", "class_names"),
    ),
    Mistake(
        "checkpoint weights do not fit its settings",
        lambda t, tmp: predict(tweaked_checkpoint(t, tmp / "edited.ckpt", reshape_a_weight), t),
        ("edited.ckpt", "does not fit"),
    ),
    Mistake(
        "resume with other model settings",
        lambda t, tmp: fit(t, tmp, t.data, "--model.network.hidden_units", "32", "--ckpt_path", t.ckpt),
        ("last.ckpt", "does not fit", "same model settings"),
    ),
    Mistake(
        "resume from a text file", lambda t, tmp: fit(t, tmp, t.data, "--ckpt_path", a_file(tmp / "x.ckpt")), ("x.ckpt", "not a checkpoint")
    ),
    Mistake(
        "export a file that is not a checkpoint",
        lambda t, tmp: ["export", a_file(tmp / "model.ckpt"), "--out", tmp / "out"],
        ("model.ckpt", "not a checkpoint"),
    ),
    Mistake(
        "predict with neither checkpoint nor data",
        lambda t, tmp: ["predict", "--data.predict_path", t.data / "test"],
        ("model.class_names", "--ckpt_path"),
    ),
    # configs
    Mistake("config file missing", lambda t, tmp: ["fit", "--config", tmp / "nothere.yaml"], ("nothere.yaml", "does not exist")),
    Mistake("config YAML syntax error", lambda t, tmp: ["fit", "--config", bad_yaml(tmp / "bad.yaml")], ("bad.yaml", "line 3")),
    Mistake("wrong type", lambda t, tmp: fit(t, tmp, t.data, "--data.batch_size", "many"), ("data.batch_size", "many")),
    Mistake("unknown option", lambda t, tmp: fit(t, tmp, t.data, "--data.batchsize", "8"), ("--data.batchsize",)),
    Mistake("batch_size 0", lambda t, tmp: fit(t, tmp, t.data, "--data.batch_size", "0"), ("data.batch_size", "0")),
    Mistake("val_fraction 1.5", lambda t, tmp: fit(t, tmp, t.data, "--data.val_fraction", "1.5"), ("data.val_fraction", "1.5")),
    Mistake("image_size below the minimum", lambda t, tmp: fit(t, tmp, t.data, "--data.image_size", "16"), ("data.image_size", "16")),
    Mistake(
        "image_size the network cannot take",
        lambda t, tmp: fit(
            t, tmp, t.data, "--model.network.channels", "[4, 4, 4, 4, 4, 4]", "--model.network.pools", "[max, max, max, max, max, max]"
        ),
        ("image_size=32", "64"),
    ),
    Mistake("negative epochs", lambda t, tmp: fit(t, tmp, t.data, "--trainer.max_epochs", "-3"), ("max_epochs", "-3")),
    Mistake(
        "negative learning rate",
        lambda t, tmp: fit(t, tmp, t.data, "--model.optimizer.init_args.lr", "-0.1"),
        ("model.optimizer", "learning rate"),
    ),
    Mistake("top_k 0", lambda t, tmp: fit(t, tmp, t.data, "--model.top_k", "0"), ("model.top_k",)),
    Mistake(
        "distillation config without a teacher",
        lambda t, tmp: ["fit", "--config", REPO / "configs" / "gemstones_distill.yaml", *fit(t, tmp, t.data)[1:]],
        ("model.distillation.teacher is not set", "--model.distillation.teacher"),
    ),
    Mistake(
        "a model setting of an earlier version",
        lambda t, tmp: fit(t, tmp, t.data, "--model.arch", "timm/resnet18"),
        ("model.arch is now model.network", "TimmSpec"),
    ),
    Mistake(
        "a class path of an earlier version",
        lambda t, tmp: fit(t, tmp, t.data, "--trainer.callbacks+=gem_lightning.callbacks.finetuning.FreezeBackbone"),
        ("gem_lightning.callbacks.finetuning.FreezeBackbone moved to gem_lightning.training.callbacks.finetuning.FreezeBackbone",),
    ),
    Mistake(
        "start method the platform lacks",
        lambda t, tmp: fit(t, tmp, t.data, "--data.loader.multiprocessing_context", "threads"),
        ("data.loader.multiprocessing_context", "threads"),
    ),
    # data
    Mistake("no data folder", lambda t, tmp: fit(t, tmp, tmp / "nowhere"), ("nowhere", "does not exist")),
    Mistake("no train/ folder", lambda t, tmp: fit(t, tmp, not_a_dataset(tmp / "photos")), ("photos", "no 'train/'")),
    Mistake("data_dir is a file", lambda t, tmp: fit(t, tmp, a_file(tmp / "gems.zip")), ("gems.zip", "is a file")),
    Mistake("train is a file", lambda t, tmp: fit(t, tmp, train_is_a_file(tmp / "d")), ("train", "is a file")),
    Mistake(
        "empty class folder",
        lambda t, tmp: fit(t, tmp, dataset(tmp / "d", {"Ruby": 4, "Jade": 4, "Opal": 0})),
        ("Opal", "no usable images"),
    ),
    Mistake("single class", lambda t, tmp: fit(t, tmp, dataset(tmp / "d", {"Ruby": 4})), ("Ruby", "at least two")),
    Mistake(
        "class too small to split", lambda t, tmp: fit(t, tmp, dataset(tmp / "d", {"Ruby": 4, "Jade": 1})), ("Jade (1)", "val_fraction 0")
    ),
    Mistake("class folder is a symlink loop", lambda t, tmp: fit(t, tmp, with_looping_class_link(tmp / "d")), ("Loop", "symbolic link")),
    Mistake(
        "symlink loop in a class, bad_files strict",
        lambda t, tmp: fit(t, tmp, with_looping_link_inside_a_class(tmp / "d"), "--data.bad_files", "strict"),
        ("Ruby/cycle", "symbolic link"),
    ),
    Mistake("no images at all", lambda t, tmp: fit(t, tmp, no_images(tmp / "d")), ("no usable images",)),
    Mistake(
        "quickstart into a folder that is not a dataset",
        lambda t, tmp: [
            "fit",
            "--config",
            REPO / "configs" / "quickstart.yaml",
            *common(tmp),
            "--data.data_dir",
            not_a_dataset(tmp / "mine"),
        ],
        ("mine", "not empty"),
    ),
    # predict
    Mistake(
        "predict path matches nothing",
        lambda t, tmp: predict(t.ckpt, t) + ["--data.predict_path", tmp / "photos" / "*.jpg"],
        ("data.predict_path", "matches no files"),
    ),
    Mistake(
        "predict output folder cannot be created",
        lambda t, tmp: predict(t.ckpt, t, "--predictions.output", a_file(tmp / "f") / "p.csv"),
        ("predictions.output", "f/p.csv"),
    ),
    Mistake(
        "predict output exists",
        lambda t, tmp: predict(t.ckpt, t, "--predictions.output", earlier_predictions(tmp / "p.csv")),
        ("p.csv", "already exist", "--predictions.overwrite"),
    ),
    # hardware and precision
    Mistake(
        "gpu accelerator without a GPU", lambda t, tmp: fit(t, tmp, t.data, "--trainer.accelerator", "gpu"), ("gpu",), needs_cpu_only=True
    ),
    Mistake(
        "16-mixed without a GPU",
        lambda t, tmp: fit(t, tmp, t.data, "--trainer.precision", "16-mixed"),
        ("16-mixed", "bf16-mixed"),
        needs_cpu_only=True,
    ),
]


def truncated(trained, path: Path) -> Path:
    path.write_bytes(trained.ckpt.read_bytes()[:4096])
    return path


def bare_state_dict(trained, path: Path) -> Path:
    torch.save(torch.load(trained.ckpt, map_location="cpu", weights_only=True)["state_dict"], path)
    return path


@pytest.mark.parametrize("mistake", MISTAKES, ids=[m.id for m in MISTAKES])
def test_mistake_ends_in_one_error_line(mistake: Mistake, trained, env, tmp_path, record_property):
    if mistake.needs_cpu_only and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    args = mistake.args(trained, tmp_path)
    before = snapshot(tmp_path, trained.root)
    result = cli(*args, env=env, cwd=tmp_path)
    stderr = result.stderr
    assert result.returncode == 2, f"exit status {result.returncode}\n{stderr[-3000:]}"
    assert "Traceback" not in stderr, stderr[-3000:]
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, stderr[-3000:]
    message = stderr[stderr.index("error:") :]
    record_property("error", message)  # --junitxml keeps the line each mistake prints
    for name in mistake.names:
        assert name in message, f"{name!r} not in: {message}"
    after = snapshot(tmp_path, trained.root)
    changed = [str(path) for path, digest in before.items() if after.get(path) != digest]
    assert not changed, f"files changed or lost: {changed}"


def test_debug_variable_shows_the_traceback(trained, env, tmp_path):
    result = cli(*predict(tmp_path / "missing.ckpt", trained), env=dict(env, GEM_LIGHTNING_DEBUG="1"), cwd=tmp_path)
    assert result.returncode == 2
    assert "Traceback" in result.stderr and "error: checkpoint" in result.stderr


def test_quickstart_config_trains_on_the_users_own_dataset(trained, env, tmp_path):
    """The natural first try, ``--config quickstart.yaml --data.data_dir <my photos>``: trains on them,
    generates nothing, and a looping link inside a class is listed, not followed."""
    mine = make_dataset(tmp_path / "my photos", train_per_class=4, test_per_class=1)
    (mine / "train" / "Red Stone" / "again").symlink_to("..")
    before = snapshot(mine)
    result = cli("fit", "--config", REPO / "configs" / "quickstart.yaml", *common(tmp_path), "--data.data_dir", mine,
                 "--trainer.max_steps", "1", "--trainer.precision", "32-true", env=env, cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    assert "training on it; nothing is generated" in output
    assert "Red Stone/again: symbolic link to a folder (not followed)" in output
    assert snapshot(mine) == before and not (mine / ".complete").exists()
    [ckpt] = tmp_path.glob("runs/quickstart/version_0/checkpoints/last.ckpt")
    hparams = torch.load(ckpt, map_location="cpu", weights_only=True)["hyper_parameters"]
    assert hparams["class_names"] == ["Blue Stone", "Green Stone", "Red Stone"]


# Faults --------------------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 1 MiB tmpfs: a real file system that fills up (needs root and permission to mount)."""
    mount = tmp_path / "small-disk"
    mount.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs to fill up needs root")
    status = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True, text=True)
    if status.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {status.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_disk_full_during_checkpoint_save_keeps_the_previous_last_ckpt(trained, env, tmp_path, small_disk):
    checkpoints = small_disk / "checkpoints"
    args = ["fit", *common(tmp_path), "--data.data_dir", trained.data, "--checkpoint.dirpath", checkpoints,
            "--checkpoint.save_top_k", "0", "--trainer.max_epochs", "1"]  # fmt: skip
    first = cli(*args, env=env, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    last = checkpoints / "last.ckpt"
    saved = last.read_bytes()
    free = shutil.disk_usage(small_disk).free
    (small_disk / "filler").write_bytes(b"\0" * (free - 4096))  # leaves less than a checkpoint

    result = cli(*args[:-1], "2", "--ckpt_path", last, env=env, cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    message = result.stderr[result.stderr.index("error:") :]
    assert "the disk is full" in message and str(last) in message and "intact" in message
    assert last.read_bytes() == saved
    assert not [p.name for p in checkpoints.iterdir() if p.name != "last.ckpt"], "no temporary file left behind"


def test_ctrl_c_during_fit_saves_a_resumable_last_ckpt(env, tmp_path):
    """SIGINT to the whole process group, as a terminal sends it (loader workers included)."""
    data = make_dataset(tmp_path / "gems", train_per_class=40, test_per_class=1)
    checkpoints = tmp_path / "checkpoints"
    args = ["fit", *common(tmp_path), "--data.data_dir", data, "--data.batch_size", "2", "--data.loader.num_workers", "1",
            "--checkpoint.dirpath", checkpoints, "--trainer.max_epochs", "20"]  # fmt: skip
    process = start_main(args, env=env, cwd=tmp_path, stdout=tmp_path / "fit.out", stderr=tmp_path / "fit.err")  # a session of its own
    try:
        deadline = time.monotonic() + 240
        while not (checkpoints / "last.ckpt").exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)  # the first epoch is done: training is under way
        assert process.poll() is None, "fit ended before it could be interrupted"
        time.sleep(1.0)
        os.killpg(process.pid, signal.SIGINT)
        process.wait(timeout=120)
    finally:
        if process.poll() is None:
            process.kill_group()
    stderr = (tmp_path / "fit.err").read_text()
    assert process.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    assert f"Interrupted (Ctrl-C): saved a resumable checkpoint to '{checkpoints / 'last.ckpt'}'" in stderr
    checkpoint = torch.load(checkpoints / "last.ckpt", map_location="cpu", weights_only=True)
    steps_per_epoch = 48  # 3 classes x 40 images, 32 a class for training, batches of 2
    epoch, interrupted_at = checkpoint["epoch"], checkpoint["global_step"]
    assert steps_per_epoch <= interrupted_at < 20 * steps_per_epoch, "saved at the interrupt, after the first epoch"

    resumed = cli(*args[:-1], epoch + 1, "--ckpt_path", checkpoints / "last.ckpt", env=env, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    final = torch.load(checkpoints / "last.ckpt", map_location="cpu", weights_only=True)
    assert final["global_step"] == (epoch + 1) * steps_per_epoch, "the resumed run finished the interrupted epoch"

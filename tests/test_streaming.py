"""Streams: a folder optimized once into LitData chunks, then read by fit, validate, test and predict."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from conftest import datamodule_kwargs, make_dataset
from helpers import TINY_MODEL, TINY_NETWORK, read_metrics, run_cli
from lightning.pytorch import Callback, Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint

from gem_lightning.data.datamodule import GemDataModule
from gem_lightning.data.streaming import METADATA, read_info
from gem_lightning.data.tools.optimize import optimize_dataset
from gem_lightning.errors import UserInputError
from gem_lightning.training.module import GemClassifier


@pytest.fixture(scope="module")
def folder_and_stream(tmp_path_factory):
    root = tmp_path_factory.mktemp("stream")
    folder = make_dataset(root / "gems", train_per_class=10, test_per_class=3)
    optimize_dataset(folder, str(root / "stream"), image_size=32, val_fraction=0.3, seed=1, num_workers=1)
    return folder, root / "stream"


def test_optimize_records_classes_split_and_decoding_and_refuses_to_mix(folder_and_stream):
    folder, stream = folder_and_stream
    info = read_info(str(stream))
    assert info.class_names == ["Blue Stone", "Green Stone", "Red Stone"] and info.image_format == "resized"
    assert info.counts == {"train": 21, "val": 9, "test": 9} and (info.val_fraction, info.seed) == (0.3, 1)
    assert json.loads((stream / METADATA).read_text())["decode"]["size"] == info.decode.size
    with pytest.raises(UserInputError, match="already holds data"):
        optimize_dataset(folder, str(stream), image_size=32)


def test_a_stream_evaluates_exactly_as_its_folder(folder_and_stream, isolated_cache, tmp_path):
    """Same split, same pixels: the validation and test metrics of one model are equal."""
    folder, stream = folder_and_stream
    model = GemClassifier(["Blue Stone", "Green Stone", "Red Stone"], 32, network=TINY_NETWORK).eval()
    results = {}
    for name, data_dir in (("folder", folder), ("stream", stream)):
        datamodule = GemDataModule(str(data_dir), **datamodule_kwargs(isolated_cache, val_fraction=0.3, seed=1))
        trainer = Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
        results[name] = {**trainer.validate(model, datamodule=datamodule)[0], **trainer.test(model, datamodule=datamodule)[0]}
    assert results["stream"] == results["folder"] and results["folder"]["test/samples"] == 9


class SeenIndices(Callback):
    def __init__(self) -> None:
        self.indices: list[int] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.indices += batch[2].tolist()


def fit_stream(stream, cache, tmp_path, *, ckpt_path=None, callbacks_extra=(), **trainer_kwargs) -> tuple[Trainer, SeenIndices]:
    seed_everything(0)
    seen = SeenIndices()
    datamodule = GemDataModule(str(stream), **datamodule_kwargs(cache, val_fraction=0.3, seed=1, num_workers=1))
    model = GemClassifier(datamodule.class_names, 32, network=TINY_NETWORK)
    trainer = Trainer(
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[seen, *callbacks_extra],
        default_root_dir=tmp_path,
        limit_val_batches=0,
        **trainer_kwargs,
    )
    trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
    return trainer, seen


def test_a_run_stopped_mid_epoch_resumes_where_it_stopped(folder_and_stream, isolated_cache, tmp_path):
    """The loader's position is in a checkpoint written mid-epoch: resuming trains the rest of the epoch's batches."""
    _, stream = folder_and_stream
    _, whole = fit_stream(stream, isolated_cache, tmp_path, max_epochs=1)
    every_2 = ModelCheckpoint(dirpath=tmp_path / "checkpoints", every_n_train_steps=2, save_top_k=-1, filename="{step}")
    fit_stream(stream, isolated_cache, tmp_path, max_epochs=1, callbacks_extra=[every_2])
    checkpoint = tmp_path / "checkpoints" / "step=2.ckpt"
    assert "combined_loader" in torch.load(checkpoint, weights_only=False)["loops"]["fit_loop"]["state_dict"]
    resumed, rest = fit_stream(stream, isolated_cache, tmp_path, max_epochs=1, ckpt_path=str(checkpoint))
    assert len(whole.indices) == 21 and sorted(whole.indices) == list(range(21))
    assert rest.indices == whole.indices[16:] and resumed.global_step == 3  # the third batch only: none replayed, none skipped


def test_a_resized_stream_refuses_another_image_size_in_one_line(folder_and_stream, isolated_cache):
    _, stream = folder_and_stream
    with pytest.raises(UserInputError, match="needs 74 px stored images, but the stream .* holds 37 px"):
        GemDataModule(str(stream), **datamodule_kwargs(isolated_cache, image_size=64))


def test_a_folder_that_is_not_a_finished_stream_is_named(tmp_path, isolated_cache):
    (tmp_path / "half" / "train").mkdir(parents=True)
    (tmp_path / "half" / METADATA).write_text("{not json")
    with pytest.raises(UserInputError, match="is not valid stream metadata"):
        GemDataModule(str(tmp_path / "half"), **datamodule_kwargs(isolated_cache))


@pytest.mark.slow
def test_the_command_line_optimizes_fits_tests_and_predicts_from_a_stream(tmp_path, cpu_env):
    folder = make_dataset(tmp_path / "gems", 6, 2)
    run_cli(
        "optimize",
        "--data_dir",
        folder,
        "--output",
        tmp_path / "encoded",
        "--format",
        "encoded",
        "--image_size",
        "32",
        "--num_workers",
        "1",
        env=cpu_env,
        cwd=tmp_path,
    )
    again = run_cli("optimize", "--data_dir", folder, "--output", tmp_path / "encoded", env=cpu_env, cwd=tmp_path, check=False)
    assert again.returncode == 2 and "already holds data" in again.stderr and "Traceback" not in again.stderr
    common = [
        "--data.data_dir",
        tmp_path / "encoded",
        "--data.image_size",
        "32",
        "--data.batch_size",
        "4",
        "--data.loader.num_workers",
        "0",
        "--trainer.logger.init_args.save_dir",
        tmp_path / "runs",
        "--trainer.enable_progress_bar",
        "false",
    ]
    run_cli("fit", *common, *TINY_MODEL, "--trainer.max_epochs", "1", env=cpu_env, cwd=tmp_path)
    ckpt = next((tmp_path / "runs").rglob("last.ckpt"))
    run_cli("test", *common, "--ckpt_path", ckpt, env=cpu_env, cwd=tmp_path)
    assert read_metrics(tmp_path / "runs" / "gem" / "version_1")["test/samples"] == 6
    out = tmp_path / "predictions.csv"
    run_cli(
        "predict",
        "--ckpt_path",
        ckpt,
        "--data.predict_path",
        tmp_path / "encoded",
        "--predictions.output",
        out,
        "--data.loader.num_workers",
        "0",
        "--trainer.logger.init_args.save_dir",
        tmp_path / "runs",
        env=cpu_env,
        cwd=tmp_path,
    )
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 6 and all(row["path"].startswith("test/") for row in rows)


@pytest.mark.slow
def test_a_damaged_chunk_is_named_in_one_line(folder_and_stream, tmp_path, cpu_env):
    import shutil

    _, stream = folder_and_stream
    damaged = tmp_path / "damaged"
    shutil.copytree(stream, damaged)
    chunk = next((damaged / "test").glob("*.bin"))
    chunk.write_bytes(chunk.read_bytes()[: chunk.stat().st_size // 2])
    model = GemClassifier(["Blue Stone", "Green Stone", "Red Stone"], 32, network=TINY_NETWORK)
    ckpt = tmp_path / "model.ckpt"
    trainer = Trainer(accelerator="cpu", logger=False)
    trainer.strategy.connect(model)
    trainer.save_checkpoint(ckpt)
    result = run_cli(
        "test",
        "--data.data_dir",
        damaged,
        "--data.loader.num_workers",
        "1",
        "--ckpt_path",
        ckpt,
        "--trainer.logger.init_args.save_dir",
        tmp_path / "runs",
        env=cpu_env,
        cwd=tmp_path,
        check=False,
    )
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2 and len(errors) == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert "is damaged" in errors[0] and chunk.name in errors[0]

"""Checkpoints written before ``model.network`` existed (flat ``arch``, ``channels``, ``weights``,
``teacher``, ...) still load and predict as the same network.

``fixtures/legacy_checkpoints.json`` was read off two checkpoints that gem-lightning wrote at commit
821a3b9 (the last with flat model hyperparameters), both 32 px on three colour classes: a VGG
(``--model.channels [8, 16] --model.pools [max, avg] --model.hidden_units 16 --model.dropout 0.25
--model.tta hflip``) and a timm model (``--model.arch timm/test_efficientnet --model.backbone_kwargs
{drop_rate: 0.1} --model.frozen_stages 1 --model.backbone_lr_ratio 0.5``): their hyperparameters as
written, and the name and shape of every tensor. A test writes such a checkpoint again from those
hyperparameters and today's network's weights (no binary fixture), so it checks both halves of
compatibility: the saved weights still fit the network the upgraded settings build, and the flat
settings still rebuild that network, in every way a checkpoint is loaded.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from conftest import make_dataset
from helpers import run_cli

from gem_lightning.inference.api import load_model
from gem_lightning.models import TimmSpec, VGGSpec
from gem_lightning.serving.server import describe_checkpoint
from gem_lightning.training.checkpoints import checkpoint_hparams
from gem_lightning.training.module import GemClassifier

LEGACY = json.loads((Path(__file__).parent / "fixtures" / "legacy_checkpoints.json").read_text())
EXPECTED_SPECS = {
    "vgg": VGGSpec(channels=(8, 16), pools=("max", "avg"), hidden_units=16, dropout=0.25),
    "timm": TimmSpec("test_efficientnet", kwargs={"drop_rate": 0.1}, frozen_stages=1),
}
CLASSES = ["Blue Stone", "Green Stone", "Red Stone"]


def todays_model(name: str) -> GemClassifier:
    torch.manual_seed(0)
    hparams = LEGACY[name]["hparams"]
    return GemClassifier(CLASSES, 32, network=EXPECTED_SPECS[name], tta=hparams["tta"], mean=hparams["mean"], std=hparams["std"]).eval()


def legacy_checkpoint(name: str, path: Path) -> tuple[Path, GemClassifier]:
    """A checkpoint as the flat-hyperparameter code wrote it, holding the weights of today's equivalent model."""
    model = todays_model(name)
    torch.save(
        {
            "state_dict": model.state_dict(),
            "hyper_parameters": LEGACY[name]["hparams"],
            "hparams_name": "kwargs",
            "pytorch-lightning_version": LEGACY[name]["lightning_version"],
            "epoch": 0,
            "global_step": 1,
        },
        path,
    )
    return path, model


def seeded_images() -> torch.Tensor:
    return torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name", ["vgg", "timm"])
def test_the_weights_an_old_checkpoint_holds_fit_the_network_its_settings_now_build(name):
    shapes = {key: list(tensor.shape) for key, tensor in todays_model(name).state_dict().items()}
    assert shapes == LEGACY[name]["state_shapes"]


@pytest.mark.parametrize("name", ["vgg", "timm"])
def test_a_flat_checkpoint_loads_as_its_network_spec_and_predicts_as_that_network(name, tmp_path):
    path, reference = legacy_checkpoint(name, tmp_path / f"{name}.ckpt")
    model = GemClassifier.load_from_checkpoint(path, map_location="cpu").eval()
    assert model.network_spec == EXPECTED_SPECS[name] and model.distillation is None
    assert model.hparams.tta == LEGACY[name]["hparams"]["tta"]
    assert model.hparams.backbone_lr_ratio == LEGACY[name]["hparams"]["backbone_lr_ratio"]
    with torch.inference_mode():
        torch.testing.assert_close(model.predict_proba(seeded_images()), reference.predict_proba(seeded_images()), atol=0, rtol=0)


def test_flat_hyperparameters_are_brought_to_todays_shape(tmp_path):
    path, _ = legacy_checkpoint("timm", tmp_path / "timm.ckpt")
    hparams = checkpoint_hparams(path)
    assert hparams["network"] == EXPECTED_SPECS["timm"].to_config() and hparams["distillation"] is None
    assert not {"arch", "weights", "backbone_kwargs", "frozen_stages", "channels", "teacher", "distill_weight"} & set(hparams)
    assert hparams["class_names"] == CLASSES and hparams["image_size"] == 32
    assert describe_checkpoint(path)["architecture"]["arch"] == "test_efficientnet"


@pytest.mark.slow
def test_the_command_line_and_the_api_predict_with_a_flat_checkpoint(tmp_path, cpu_env):
    path, _ = legacy_checkpoint("vgg", tmp_path / "vgg.ckpt")
    photos = make_dataset(tmp_path / "gems", 1, 2) / "test"
    out = tmp_path / "predictions.csv"
    run_cli(
        "predict",
        "--ckpt_path",
        path,
        "--data.predict_path",
        photos,
        "--predictions.output",
        out,
        "--model.tta",
        "hflip",
        "--trainer.logger.init_args.save_dir",
        tmp_path / "runs",
        "--trainer.enable_progress_bar",
        "false",
        "--data.loader.num_workers",
        "0",
        env=cpu_env,
        cwd=tmp_path,
    )
    rows = {Path(row["path"]).name: row for row in csv.DictReader(out.open())}
    api = load_model(path)
    for photo in sorted(photos.rglob("*.jpg")):
        [(name, probability)] = api.classify(photo, top_k=1)
        assert rows[photo.name]["prediction"] == name and float(rows[photo.name]["probability"]) == pytest.approx(probability, abs=1e-5)

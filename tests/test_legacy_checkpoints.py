"""Checkpoints written before ``model.network`` existed (flat ``arch``, ``channels``, ``weights``, ...)
still load and predict the same.

The fixtures were written by gem-lightning at commit 821a3b9 (the last one with flat model
hyperparameters), with optimizer states dropped to keep them small:
``tests/fixtures/legacy_vgg.ckpt`` (``--model.channels [8, 16] --model.pools [max, avg]
--model.hidden_units 16 --model.dropout 0.25 --model.tta hflip``) and ``legacy_timm.ckpt``
(``--model.arch timm/test_efficientnet --model.backbone_kwargs {drop_rate: 0.1}
--model.frozen_stages 1 --model.backbone_lr_ratio 0.5``), both 32 px on three colour classes.
``legacy_predictions.json`` holds the probabilities that code gave for four seeded random images.
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

FIXTURES = Path(__file__).parent / "fixtures"
RECORDED = json.loads((FIXTURES / "legacy_predictions.json").read_text())
EXPECTED_SPECS = {
    "vgg": VGGSpec(channels=(8, 16), pools=("max", "avg"), hidden_units=16, dropout=0.25),
    "timm": TimmSpec("test_efficientnet", kwargs={"drop_rate": 0.1}, frozen_stages=1),
}


def seeded_images() -> torch.Tensor:
    return torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name", ["vgg", "timm"])
def test_a_flat_checkpoint_loads_as_its_network_spec_and_predicts_as_before(name):
    model = GemClassifier.load_from_checkpoint(FIXTURES / f"legacy_{name}.ckpt", map_location="cpu").eval()
    assert model.network_spec == EXPECTED_SPECS[name] and model.distillation is None
    assert model.hparams.tta == RECORDED[name]["hparams"]["tta"] and model.hparams.backbone_lr_ratio == RECORDED[name]["hparams"]["backbone_lr_ratio"]
    with torch.inference_mode():
        probs = model.predict_proba(seeded_images())
    torch.testing.assert_close(probs, torch.tensor(RECORDED[name]["probs"]), atol=1e-5, rtol=0)


def test_flat_hyperparameters_are_brought_to_todays_shape():
    hparams = checkpoint_hparams(FIXTURES / "legacy_timm.ckpt")
    assert hparams["network"] == EXPECTED_SPECS["timm"].to_config() and hparams["distillation"] is None
    assert not {"arch", "weights", "backbone_kwargs", "frozen_stages", "channels", "teacher", "distill_weight"} & set(hparams)
    assert hparams["class_names"] == ["Blue Stone", "Green Stone", "Red Stone"] and hparams["image_size"] == 32
    assert describe_checkpoint(FIXTURES / "legacy_timm.ckpt")["architecture"]["arch"] == "test_efficientnet"


@pytest.mark.slow
def test_the_command_line_and_the_api_predict_with_a_flat_checkpoint(tmp_path, cpu_env):
    photos = make_dataset(tmp_path / "gems", 1, 2) / "test"
    out = tmp_path / "predictions.csv"
    run_cli("predict", "--ckpt_path", FIXTURES / "legacy_vgg.ckpt", "--data.predict_path", photos, "--predictions.output", out, "--model.tta", "hflip",
            "--trainer.logger.init_args.save_dir", tmp_path / "runs", "--trainer.enable_progress_bar", "false", env=cpu_env, cwd=tmp_path)
    rows = {Path(row["path"]).name: row for row in csv.DictReader(out.open())}
    api = load_model(FIXTURES / "legacy_vgg.ckpt")
    for photo in sorted(photos.rglob("*.jpg")):
        [(name, probability)] = api.classify(photo, top_k=1)
        assert rows[photo.name]["prediction"] == name and float(rows[photo.name]["probability"]) == pytest.approx(probability, abs=1e-5)

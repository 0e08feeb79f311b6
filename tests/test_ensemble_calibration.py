"""Ensembles of checkpoints and calibrated probabilities: as models, through the CLI, the API and the export."""

from __future__ import annotations

import csv
import json

import lightning
import pytest
import torch
from conftest import COLOURS, make_dataset
from helpers import TINY_MODEL, TINY_NETWORK, run_cli

from gem_lightning.errors import UserInputError
from gem_lightning.inference.api import load_model
from gem_lightning.training.calibration import expected_calibration_error, fit_temperature, with_temperature
from gem_lightning.training.combine import ensemble_checkpoint
from gem_lightning.training.module import GemClassifier

CLASSES = list(COLOURS)


def write_checkpoint(path, seed: int, class_names=CLASSES, image_size: int = 32, **settings):
    """A checkpoint as training writes it (weights and hyperparameters), of a randomly initialised tiny model."""
    torch.manual_seed(seed)
    model = GemClassifier(class_names, image_size, network=TINY_NETWORK, **settings)
    torch.save(
        {"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams), "pytorch-lightning_version": lightning.__version__},
        path,
    )
    return path


def images(count: int = 6, size: int = 32) -> torch.Tensor:
    return torch.randint(0, 256, (count, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


def test_an_ensemble_answers_the_mean_of_its_members_calibrated_probabilities(tmp_path):
    members = [write_checkpoint(tmp_path / "a.ckpt", 0), write_checkpoint(tmp_path / "b.ckpt", 1, temperature=2.0)]
    torch.save(ensemble_checkpoint(members), tmp_path / "ensemble.ckpt")
    ensemble = load_model(tmp_path / "ensemble.ckpt").classifier
    singles = [load_model(path).classifier for path in members]
    with torch.no_grad():
        expected = torch.stack([model.predict_proba(images()) for model in singles]).mean(0)
        torch.testing.assert_close(ensemble.predict_proba(images()), expected, rtol=1e-5, atol=1e-6)
        assert not torch.allclose(singles[0].predict_proba(images()), singles[1].predict_proba(images()), atol=1e-3)


def test_members_with_other_classes_or_sizes_are_refused_in_one_line(tmp_path):
    first = write_checkpoint(tmp_path / "a.ckpt", 0)
    renamed = write_checkpoint(tmp_path / "b.ckpt", 1, class_names=[*CLASSES[:-1], "Other"])
    larger = write_checkpoint(tmp_path / "c.ckpt", 2, image_size=48)
    with pytest.raises(UserInputError, match=r"cannot join an ensemble with .*their classes differ .*first difference"):
        ensemble_checkpoint([first, renamed])
    with pytest.raises(UserInputError, match="their image_size differs"):
        ensemble_checkpoint([first, larger])
    with pytest.raises(UserInputError, match="at least two checkpoints"):
        ensemble_checkpoint([first])


def test_fitted_temperature_undoes_overconfidence_and_lowers_the_calibration_error():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(4000, 10, generator=generator) * 2
    targets = torch.multinomial(logits.softmax(-1), 1, generator=generator).squeeze(1)  # labels drawn from softmax(z)
    overconfident = (logits * 3).softmax(-1)  # the model answers softmax(3 z)
    temperature = fit_temperature(overconfident, targets)
    assert temperature == pytest.approx(3.0, rel=0.1)
    before = expected_calibration_error(overconfident, targets)
    after = expected_calibration_error(with_temperature(overconfident, temperature), targets)
    assert after < 0.03 < before
    assert torch.equal(with_temperature(overconfident, temperature).argmax(-1), overconfident.argmax(-1))  # accuracy unchanged


@pytest.mark.slow
def test_calibrate_and_ensemble_through_the_command_line(tmp_path, cpu_env):
    data = make_dataset(tmp_path / "gems", train_per_class=12)
    common = [
        "--data.data_dir",
        data,
        "--data.image_size",
        "32",
        "--data.val_fraction",
        "0.3",
        "--data.loader.num_workers",
        "0",
        "--trainer.accelerator",
        "cpu",
        "--trainer.logger.init_args.save_dir",
        tmp_path / "runs",
        *TINY_MODEL,
    ]
    checkpoints = []
    for seed in (0, 1):
        run_cli(
            "fit",
            *common,
            "--trainer.max_epochs",
            "3",
            "--seed_everything",
            seed,
            "--checkpoint.monitor",
            "null",
            env=cpu_env,
            cwd=tmp_path,
        )
        checkpoints.append(sorted((tmp_path / "runs").rglob("last.ckpt"), key=lambda p: p.stat().st_mtime)[-1])
    calibrated = tmp_path / "calibrated.ckpt"
    result = run_cli("calibrate", "--ckpt_path", checkpoints[0], "--output", calibrated, *common, env=cpu_env, cwd=tmp_path)
    assert "expected calibration error" in result.stdout
    fitted = json.loads(calibrated.with_suffix(".calibration.json").read_text())
    assert fitted["temperature"] > 0 and fitted["temperature"] != 1.0 and fitted["ece_after"] <= fitted["ece_before"] + 1e-6
    original, recalibrated = load_model(checkpoints[0]).classifier, load_model(calibrated).classifier
    with torch.no_grad():
        torch.testing.assert_close(
            recalibrated.predict_proba(images()),
            with_temperature(original.predict_proba(images()), fitted["temperature"]),
            rtol=1e-4,
            atol=1e-5,
        )

    ensemble = tmp_path / "ensemble.ckpt"
    run_cli("ensemble", calibrated, checkpoints[1], "--output", ensemble, env=cpu_env, cwd=tmp_path)
    tested = run_cli("test", "--ckpt_path", ensemble, *common, env=cpu_env, cwd=tmp_path)
    assert "test/acc" in tested.stdout
    run_cli(
        "predict",
        "--ckpt_path",
        ensemble,
        *common,
        "--data.predict_path",
        data / "test",
        "--predictions.output",
        tmp_path / "predictions.csv",
        env=cpu_env,
        cwd=tmp_path,
    )
    with (tmp_path / "predictions.csv").open() as file:
        row = next(csv.DictReader(file))
    top = load_model(ensemble).classify(row["path"], top_k=1)[0]
    assert top[0] == row["prediction"] and top[1] == pytest.approx(float(row["probability"]), abs=1e-4)
    run_cli("export", ensemble, "--out", tmp_path / "exported", "--formats", "onnx", env=cpu_env, cwd=tmp_path)
    onnxruntime = pytest.importorskip("onnxruntime")
    session = onnxruntime.InferenceSession(str(tmp_path / "exported" / "model.onnx"), providers=["CPUExecutionProvider"])
    exported = session.run(None, {session.get_inputs()[0].name: images().float().numpy()})[0]
    with torch.no_grad():
        torch.testing.assert_close(
            torch.from_numpy(exported), load_model(ensemble).classifier.predict_proba(images()), rtol=1e-4, atol=1e-5
        )

    refused = run_cli(
        "calibrate",
        "--ckpt_path",
        checkpoints[1],
        "--output",
        tmp_path / "x.ckpt",
        *common,
        "--data.val_fraction",
        "0",
        env=cpu_env,
        cwd=tmp_path,
        check=False,
    )
    assert refused.returncode == 2 and "set --data.val_fraction" in refused.stderr and "Traceback" not in refused.stderr

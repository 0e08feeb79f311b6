"""Honest answers for single-label checkpoints: calibration only on photos the model never trained on,
prediction sets that keep their promise, and "unknown" for photos unlike every class.

The statistics are checked twice: on synthetic probabilities and features with many samples (tight
tolerances a wrong quantile or score would miss), and end to end on a tiny model, generated photos
and the real command line (looser tolerances: a few hundred photos).
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import REPO, datamodule_kwargs, make_dataset
from helpers import TINY_MODEL, TINY_NETWORK
from PIL import Image
from warm_cli import run_main

from gem_lightning.data.class_folder import class_folder_dataset
from gem_lightning.data.datamodule import GemDataModule
from gem_lightning.data.provenance import PhotoRecord, digest_key
from gem_lightning.errors import UserInputError
from gem_lightning.inference.answers import AnswerSettings
from gem_lightning.inference.api import load_model
from gem_lightning.training.combine import DATA_STATE, ensemble_checkpoint
from gem_lightning.training.conformal import conformal_threshold, prediction_sets, raps_scores, true_class_standing
from gem_lightning.training.module import GemClassifier
from gem_lightning.training.unknown import fit_knn, fit_mahalanobis, knn_score, mahalanobis_score, rejection_threshold

# Two classes drawn from one colour: the model cannot tell them apart, so its sets must hold both.
CLASSES = {"Blue Stone": (40, 70, 200), "Grey A": (128, 128, 128), "Grey B": (128, 128, 128)}


def sampled(n: int, classes: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Probabilities of a calibrated model (labels drawn from them), uncertain enough for sets of several classes."""
    probs = (torch.randn(n, classes, generator=generator) * 2.5).softmax(-1)
    return probs, torch.multinomial(probs, 1, generator=generator).squeeze(1)


@pytest.mark.parametrize("lam, k_reg", [(0.0, 1), (0.01, 2), (0.2, 1)])
def test_prediction_sets_hold_the_true_class_as_often_as_promised(lam, k_reg):
    generator = torch.Generator().manual_seed(0)
    for coverage in (0.8, 0.9, 0.95):
        hits = []
        for _ in range(8):  # fresh calibration and test photos: the mean's standard error is about 0.002
            probs, labels = sampled(3000, 30, generator)
            test_probs, test_labels = sampled(10_000, 30, generator)
            threshold = conformal_threshold(raps_scores(*true_class_standing(probs, labels), lam, k_reg), coverage)
            sets = prediction_sets(test_probs, threshold, lam, k_reg)
            hits.append(np.mean([int(label) in chosen for chosen, label in zip(sets, test_labels.tolist())]))
        assert float(np.mean(hits)) == pytest.approx(coverage, abs=0.008)
    assert all(chosen[0] == int(top) for chosen, top in zip(sets, test_probs.argmax(1)))  # the top class is always in


def test_prediction_sets_grow_with_the_promise_and_too_few_photos_promise_every_class():
    probs, labels = sampled(500, 10, torch.Generator().manual_seed(1))
    scores = raps_scores(*true_class_standing(probs, labels), 0.01, 2)
    small, large = (prediction_sets(probs, conformal_threshold(scores, c), 0.01, 2) for c in (0.7, 0.95))
    assert all(set(a) <= set(b) for a, b in zip(small, large)) and sum(map(len, small)) < sum(map(len, large))
    assert conformal_threshold(scores[:9], 0.95) == float("inf")  # ceil(10 * 0.95) > 9 photos
    assert all(len(chosen) == 10 for chosen in prediction_sets(probs, float("inf"), 0.01, 2))


def test_the_rejection_threshold_rejects_the_chosen_share_of_held_out_like_photos():
    generator = torch.Generator().manual_seed(2)
    for rate in (0.01, 0.05, 0.2):
        thresholds = [rejection_threshold(torch.randn(2000, generator=generator), rate) for _ in range(4)]
        rejected = np.mean([(torch.randn(50_000, generator=generator) > t).float().mean().item() for t in thresholds])
        assert rejected == pytest.approx(rate, abs=0.25 * rate + 0.002)


def test_feature_distances_tell_far_photos_from_the_training_classes():
    generator = torch.Generator().manual_seed(3)
    centres = torch.randn(5, 64, generator=generator) * 4
    labels = torch.arange(5).repeat(100)
    features = centres[labels] + torch.randn(500, 64, generator=generator)
    near = centres[torch.arange(5).repeat(20)] + torch.randn(100, 64, generator=generator)
    far = torch.randn(100, 64, generator=generator) * 4  # features of no class
    mahalanobis, knn = fit_mahalanobis(features, labels), fit_knn(features)
    for score, statistics in ((mahalanobis_score, mahalanobis), (knn_score, knn)):
        threshold = rejection_threshold(score(near, statistics), 0.05)
        assert (score(far, statistics) > threshold).float().mean() > 0.95


def test_photo_records_keep_digests_and_stream_splits_and_say_when_they_cannot_compare():
    trained = PhotoRecord.of_files(["a" * 40, "b" * 40]) | PhotoRecord.of_files(["c" * 40])
    assert PhotoRecord.from_state(trained.state()) == trained and trained.state()["digests"].dtype == torch.int64
    assert trained.shared_with(PhotoRecord.of_files(["b" * 40, "d" * 40])) == 1 and digest_key("f" * 40) == 2**63 - 1
    assert trained.can_tell_apart(PhotoRecord.of_files(["d" * 40]))
    stream = PhotoRecord.of_stream("s3://bucket/gems", "train")
    assert stream.can_tell_apart(PhotoRecord.of_stream("s3://bucket/gems/", "val"))  # optimize split them apart
    assert stream.shared_with(PhotoRecord.of_stream("s3://bucket/gems", "train")) == 1
    assert not stream.can_tell_apart(PhotoRecord.of_stream("s3://bucket/other", "val"))
    assert not stream.can_tell_apart(PhotoRecord.of_files(["d" * 40])) and not trained.can_tell_apart(PhotoRecord.of_stream("x", "val"))


def test_checkpoints_record_the_training_split_and_a_resumed_run_adds_to_it(tmp_path):
    data = make_dataset(tmp_path / "gems", train_per_class=6)
    datamodule = GemDataModule(str(data), **datamodule_kwargs(tmp_path / "cache"))
    datamodule.setup("fit")
    train, val = (PhotoRecord.of_files(r.digest for r in datamodule.source.records[split]) for split in ("train", "val"))
    assert PhotoRecord.from_state(datamodule.state_dict()["trained_on"]) == train and not train.shared_with(val)
    earlier = PhotoRecord.of_files(["e" * 40])
    datamodule.load_state_dict({"trained_on": earlier.state()})
    assert PhotoRecord.from_state(datamodule.state_dict()["trained_on"]) == train | earlier
    datamodule.trained_before = None
    datamodule.trainer = SimpleNamespace(ckpt_path="old.ckpt")  # resumed from a checkpoint without a record: the union is unknown
    assert datamodule.state_dict() == {} and DATA_STATE == GemDataModule.__qualname__


@pytest.mark.parametrize(
    "settings, named",
    [
        (AnswerSettings(coverage=0.0), "inference.coverage must be above 0 and below 1"),
        (AnswerSettings(coverage=1.5), "inference.coverage must be above 0 and below 1"),
        (AnswerSettings(unknown=1.0), "inference.unknown must be above 0 and below 1"),
        (AnswerSettings(unknown=-0.05), "inference.unknown must be above 0 and below 1"),
        (AnswerSettings(unknown_score="knn"), "inference.unknown_score chooses the score of inference.unknown"),
        (AnswerSettings(unknown=0.05, unknown_score="mean"), "inference.unknown_score must be auto or one of"),
    ],
)
def test_settings_out_of_range_are_one_line_naming_them(settings, named):
    with pytest.raises(UserInputError, match=named) as refused:
        settings.checked("inference.")
    assert "\n" not in str(refused.value)


def test_a_calibration_folder_with_other_classes_or_none_is_one_line(tmp_path):
    make_dataset(tmp_path / "other", train_per_class=0, test_per_class=1, classes={"Pebble": (1, 2, 3)})
    kwargs = dict(settings=None, cache=None, loader=None, transform=None, what="--calibration_dir")
    with pytest.raises(UserInputError, match=r"--calibration_dir .* has class folders the model does not know: Pebble"):
        class_folder_dataset(tmp_path / "other" / "test", list(CLASSES), **kwargs)
    with pytest.raises(UserInputError, match=r"--calibration_dir .*missing' is not a folder"):
        class_folder_dataset(tmp_path / "missing", list(CLASSES), **kwargs)


# End to end: a tiny model, generated photos, the real command line -----------------------------


def noise_photos(folder: Path, count: int) -> Path:
    """Photos of nothing the model knows: uniform noise and stripes."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    for i in range(count):
        stripes = np.stack([(np.indices((40, 40)).sum(0) // (2 + i % 5) % 2 * 255).astype(np.uint8)] * 3, axis=-1)
        pixels = stripes if i % 2 else rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"nothing {i}.png")
    return folder


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict:
    cache = tmp_path_factory.mktemp("cache")
    return dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="2", PYTHONWARNINGS="ignore", GEM_LIGHTNING_CACHE=str(cache))


def cli(*args, env: dict, cwd: Path, status: int = 0):
    result = run_main(list(args), env=env, cwd=cwd)
    assert result.returncode == status, f"main.py {' '.join(map(str, args))}:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    return result


def one_line(result) -> str:
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    return errors[0]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, env: dict) -> SimpleNamespace:
    """A tiny model trained (validation split 0.3) on generated photos; held-out folders to calibrate
    and test on; photos of nothing; the checkpoint calibrated on the held-out folder."""
    root = tmp_path_factory.mktemp("answers")
    data = make_dataset(root / "gems", train_per_class=20, test_per_class=0, classes=CLASSES)
    # One grey level up: make_dataset's noise is seeded by split, class and index, so the same colours would
    # give the training photos again (which calibrate then refuses, by their bytes).
    shifted = {name: tuple(value + 1 for value in colour) for name, colour in CLASSES.items()}
    held_out = make_dataset(root / "held", train_per_class=150, test_per_class=150, classes=shifted)
    common = ["--data.image_size", "32", "--data.loader.num_workers", "0", "--data.batch_size", "64",
              "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false"]  # fmt: skip
    cli("fit", "--data.data_dir", data, "--data.val_fraction", "0.3", *common, *TINY_MODEL, "--trainer.max_epochs", "4",
        "--trainer.logger.init_args.save_dir", root / "runs", "--checkpoint.monitor", "null", env=env, cwd=root)  # fmt: skip
    checkpoint = next((root / "runs").rglob("last.ckpt"))
    calibrated = root / "calibrated.ckpt"
    result = cli("calibrate", "--ckpt_path", checkpoint, "--output", calibrated, "--calibration_dir", held_out / "train",
                 "--data.data_dir", data, *common, env=env, cwd=root)  # fmt: skip
    return SimpleNamespace(root=root, data=data, held_out=held_out, common=common, checkpoint=checkpoint, calibrated=calibrated,
                           calibrate_output=result.stdout, nothing=noise_photos(root / "nothing", 40))  # fmt: skip


@pytest.mark.slow
def test_calibrate_refuses_photos_the_checkpoint_trained_on_in_one_line(world, env):
    base = ["calibrate", "--ckpt_path", world.checkpoint, "--data.data_dir", world.data, *world.common]
    own = one_line(
        cli(*base, "--output", world.root / "x.ckpt", "--calibration_dir", world.data / "train", env=env, cwd=world.root, status=2)
    )
    assert "42 of the 60 distinct calibration photos" in own and "trained last.ckpt" in own and "--calibration_dir" in own
    other_split = one_line(cli(*base, "--output", world.root / "x.ckpt", "--data.val_fraction", "0.5", env=env, cwd=world.root, status=2))
    assert (
        "calibration photos (the validation split" in other_split and "--data.val_fraction 0.3 --data.seed 42 as in training" in other_split
    )
    assert not (world.root / "x.ckpt").exists()
    missing = one_line(
        cli(*base, "--output", world.root / "x.ckpt", "--calibration_dir", world.root / "nope", env=env, cwd=world.root, status=2)
    )
    assert "--calibration_dir" in missing and "is not a folder" in missing
    cli(*base, "--output", world.root / "own-split.ckpt", env=env, cwd=world.root)  # its own validation split: held out, accepted
    fitted = json.loads((world.root / "own-split.calibration.json").read_text())
    assert fitted["photos"] == 18 and fitted["held_out"].startswith("the validation split")


@pytest.mark.slow
def test_a_checkpoint_without_a_record_needs_trust_split(world, env):
    old = world.root / "old.ckpt"
    checkpoint = torch.load(world.checkpoint, weights_only=True)
    del checkpoint[DATA_STATE]
    torch.save(checkpoint, old)
    base = ["calibrate", "--ckpt_path", old, "--calibration_dir", world.held_out / "train", *world.common]
    refused = one_line(cli(*base, "--output", world.root / "old-x.ckpt", env=env, cwd=world.root, status=2))
    assert "does not record which photos it trained on" in refused and "--trust_split" in refused
    cli(*base, "--output", world.root / "old-calibrated.ckpt", "--trust_split", env=env, cwd=world.root)
    held = torch.load(world.root / "old-calibrated.ckpt", weights_only=True)["calibration"]["unknown"]["held_out"]
    assert set(held) == {"msp", "energy"}  # no --data.data_dir: no training photos for the feature scores


@pytest.mark.slow
def test_a_model_trained_on_every_photo_is_calibrated_on_a_folder(world, env, tmp_path):
    cli("fit", "--data.data_dir", world.data, "--data.val_fraction", "0", *world.common, *TINY_MODEL, "--trainer.max_epochs", "1",
        "--trainer.logger.init_args.save_dir", tmp_path / "runs", "--checkpoint.monitor", "null", env=env, cwd=tmp_path)  # fmt: skip
    everything = next((tmp_path / "runs").rglob("last.ckpt"))
    base = ["calibrate", "--ckpt_path", everything, "--data.data_dir", world.data, *world.common]
    empty = one_line(cli(*base, "--output", tmp_path / "x.ckpt", env=env, cwd=tmp_path, status=2))
    assert "validation split is empty" in empty and "trained with data.val_fraction 0" in empty
    cli(*base, "--output", tmp_path / "c.ckpt", "--calibration_dir", world.held_out / "train", env=env, cwd=tmp_path)
    assert json.loads((tmp_path / "c.calibration.json").read_text())["photos"] == 450


@pytest.mark.slow
def test_predict_answers_sets_that_keep_their_promise_and_unknown_for_photos_of_nothing(world, env):
    def predict(photos: Path, output: Path, *answers: str) -> list[dict]:
        cli("predict", "--ckpt_path", world.calibrated, "--data.predict_path", photos, *answers, "--predictions.output", output,
            *(["--predictions.format", "jsonl"] if output.suffix == ".jsonl" else []), *world.common, env=env, cwd=world.root)  # fmt: skip
        with output.open() as file:
            return [json.loads(line) for line in file] if output.suffix == ".jsonl" else list(csv.DictReader(file))

    sets = predict(world.held_out / "test", world.root / "sets.jsonl", "--inference.coverage", "0.8")
    truth = [Path(row["path"]).parent.name for row in sets]
    assert len(sets) == 450 and np.mean([label in row["prediction_set"] for row, label in zip(sets, truth)]) == pytest.approx(0.8, abs=0.07)
    assert np.mean([len(row["prediction_set"]) for row in sets]) > 1.1  # the two greys: often a set of two
    rejected = predict(world.held_out / "test", world.root / "unknown.csv", "--inference.unknown", "0.2", "--inference.coverage", "0.8")
    assert {"prediction_set", "unknown", "unknown_score"} <= set(rejected[0])
    assert np.mean([row["unknown"] == "true" for row in rejected]) == pytest.approx(0.2, abs=0.08)  # the false-rejection rate asked
    nothing = predict(world.nothing, world.root / "nothing.csv", "--inference.unknown", "0.2")
    assert np.mean([row["prediction"] == "unknown" and row["unknown"] == "true" for row in nothing]) >= 0.9

    model = load_model(world.calibrated, coverage=0.8, unknown=0.2)
    by_path = {row["path"]: row for row in rejected}
    for answer, row in zip(model.answer_many([row["path"] for row in sets[::50]]), sets[::50]):
        same = by_path[row["path"]]
        assert answer.prediction == same["prediction"] and answer.unknown == (same["unknown"] == "true")
        assert answer.prediction_set == ([] if answer.unknown else row["prediction_set"])
        assert answer.unknown_score == pytest.approx(float(same["unknown_score"]), abs=1e-5)
    assert load_model(world.calibrated, unknown=0.2).answer(next(world.nothing.iterdir())).prediction == "unknown"


@pytest.mark.slow
def test_bad_answer_settings_are_one_line(world, env):
    base = ["predict", "--data.predict_path", world.nothing, *world.common, "--predictions.output", world.root / "bad.csv"]
    uncalibrated = one_line(cli(*base, "--ckpt_path", world.checkpoint, "--inference.coverage", "0.9", env=env, cwd=world.root, status=2))
    assert "inference.coverage needs a calibrated checkpoint" in uncalibrated and "main.py calibrate" in uncalibrated
    ranges = one_line(cli(*base, "--ckpt_path", world.calibrated, "--inference.coverage", "1.5", "--inference.unknown", "0",
                          env=env, cwd=world.root, status=2))  # fmt: skip
    assert "inference.coverage must be above 0 and below 1" in ranges and "inference.unknown must be above 0 and below 1" in ranges
    with pytest.raises(UserInputError, match="unknown_score knn reads the torch network's penultimate layer"):
        load_model(world.calibrated, unknown=0.05, unknown_score="knn", runtime="onnxruntime")
    with pytest.raises(UserInputError, match="coverage must be above 0 and below 1"):
        load_model(world.calibrated, coverage=1.0)
    assert not (world.root / "bad.csv").exists()
    serve = one_line(cli("serve", "--ckpt_path", world.checkpoint, "--unknown", "0.05", env=env, cwd=world.root, status=2))
    assert "--unknown needs a calibrated checkpoint" in serve
    out_of_range = cli("serve", "--ckpt_path", world.calibrated, "--coverage", "0", env=env, cwd=world.root, status=2)
    assert "--coverage must be above 0 and below 1" in out_of_range.stderr and "Traceback" not in out_of_range.stderr


def test_an_ensemble_records_what_all_its_members_trained_on(tmp_path):
    def member(name: str, record: PhotoRecord | None) -> Path:
        model = GemClassifier(list(CLASSES), 32, network=TINY_NETWORK)
        checkpoint = {"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}
        if record is not None:
            checkpoint[DATA_STATE] = {"trained_on": record.state()}
        torch.save(checkpoint, tmp_path / name)
        return tmp_path / name

    a, b = PhotoRecord.of_files(["a" * 40]), PhotoRecord.of_files(["b" * 40])
    both = ensemble_checkpoint([member("a.ckpt", a), member("b.ckpt", b)])
    assert PhotoRecord.from_state(both[DATA_STATE]["trained_on"]) == a | b
    assert DATA_STATE not in ensemble_checkpoint([member("c.ckpt", a), member("old.ckpt", None)])  # one unknown: the union is unknown


@pytest.mark.slow
def test_serve_answers_sets_and_unknown_in_json_and_on_the_page(world):
    from serving import start_server

    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    env.pop("GEM_LIGHTNING_API_KEY", None)
    server = start_server(world.calibrated, world.root / "serve.log", env, "--coverage", "0.8", "--unknown", "0.2")
    try:
        info = server.request("/info").json()["model"]["answers"]
        assert info == {"coverage": 0.8, "unknown": 0.2, "unknown_score": "knn"}
        nothing = server.predict(next(world.nothing.iterdir()).read_bytes(), "image/png").json()
        assert nothing["prediction"] == "unknown" and nothing["unknown"] is True and nothing["prediction_set"] == []
        model = load_model(world.calibrated, coverage=0.8, unknown=0.2)
        photo = next(p for p in sorted((world.held_out / "test" / "Blue Stone").iterdir()) if not model.answer(p).unknown)
        blue = server.predict(photo.read_bytes()).json()
        expected = model.answer(photo)
        assert blue["prediction"] == expected.prediction and [p["class"] for p in blue["prediction_set"]] == expected.prediction_set
        assert blue["coverage"] == 0.8 and blue["unknown"] is expected.unknown
        _check_the_page(server, photo, next(world.nothing.iterdir()))
    finally:
        assert server.stop() == 0, server.log.read_text()


def _check_the_page(server, photo: Path, nothing: Path) -> None:
    """The page shows the set and "none of these" (when a browser is at hand)."""
    import shutil

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    try:
        from playwright import sync_api
    except ImportError:
        sync_api = None
    if chromium is None or sync_api is None:
        return
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, headless=True)
        page = browser.new_page(viewport={"width": 1200, "height": 800})
        page.goto(server.url + "/")
        page.wait_for_selector("#model:has-text('80.0 % prediction sets')")
        page.set_input_files("#files", [str(photo), str(nothing)])
        page.locator(f".card.done[data-file='{nothing.name}'] .answer.unknown").wait_for(timeout=60_000)
        page.locator(f".card.done[data-file='{photo.name}'] .answer.set").wait_for(timeout=60_000)
        assert "80.0 % sure it is one of: Blue Stone" in page.locator(f".card[data-file='{photo.name}'] .answer").inner_text()
        screenshots = REPO / "runs" / "screenshots"
        screenshots.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(screenshots / "serve_page_answers.png"), full_page=True)
        browser.close()

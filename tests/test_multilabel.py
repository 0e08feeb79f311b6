"""Several labels a photo: the labels file, its split, training with per-label thresholds, and every
path a multi-label checkpoint takes (test, predict, the API, ONNX Runtime, streams, serve, DDP)."""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import REPO, datamodule_kwargs
from helpers import LABEL_COLOURS, TINY_MODEL, make_labels_file, read_metrics, run_cli, train_tiny
from serving import start_server

from gem_lightning.data.datamodule import GemDataModule
from gem_lightning.data.labels_file import LabelsFileError
from gem_lightning.data.scan import ImageRecord
from gem_lightning.data.split import multilabel_split
from gem_lightning.inference.api import load_model
from gem_lightning.training.conformal import label_coverage_threshold, labels_above, true_label_probs

EPOCHS = 8
COMMON = [
    "--data.image_size",
    "32",
    "--data.batch_size",
    "16",
    "--data.loader.num_workers",
    "0",
    "--trainer.accelerator",
    "cpu",
    "--trainer.enable_progress_bar",
    "false",
    "--trainer.precision",
    "32-true",
]


def env_for(root: Path) -> dict:
    return dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="2", PYTHONWARNINGS="ignore", GEM_LIGHTNING_CACHE=str(root / "cache"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """A tiny network fitted on a generated labels file (colours on white: which are there?)."""
    root = tmp_path_factory.mktemp("multilabel")
    labels = make_labels_file(root / "set")
    env = env_for(root)
    run_cli(
        "fit",
        "--data.data_dir",
        labels,
        *COMMON,
        *TINY_MODEL,
        "--model.optimizer.init_args.lr",
        "0.01",
        "--trainer.max_epochs",
        EPOCHS,
        "--trainer.logger.init_args.save_dir",
        root / "fit",
        env=env,
        cwd=root,
    )
    checkpoint = next((root / "fit").rglob("last.ckpt"))
    return SimpleNamespace(
        root=root, labels=labels, env=env, checkpoint=checkpoint, photos=sorted((root / "set" / "photos" / "test").glob("*.png"))
    )


def label_sets_of(csv_path: Path, split: str) -> dict[str, set[str]]:
    with csv_path.open() as file:
        return {row["path"]: set(row["labels"].split(";")) for row in csv.DictReader(file) if row["split"] == split}


# The labels file -----------------------------------------------------------------------------


def write_rows(path: Path, header: str, rows: list[str]) -> Path:
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


@pytest.mark.parametrize(
    "header, row, message",
    [
        ("path,labels,colour", "photos/train/000.png,Red,red", r"unknown column\(s\) 'colour'"),
        ("path,split", "photos/train/000.png,train", r"no 'labels' column"),
        ("path,labels,split", "photos/train/000.png,Red,later", r"line \d+: split 'later' is not one of train, val, test"),
        ("path,labels,split", "photos/test/000.png,Purple,test", r"test rows name classes no training row has: Purple"),
    ],
)
def test_a_labels_file_that_cannot_be_read_is_refused_in_one_line(tmp_path, header, row, message):
    labels = make_labels_file(tmp_path, train=6, test=0)
    good = [line for line in labels.read_text().splitlines()[1:]]
    bad = write_rows(tmp_path / "bad.csv", header, [",".join(line.split(",")[: header.count(",") + 1]) for line in good] + [row])
    with pytest.raises(LabelsFileError, match=message):
        GemDataModule(str(bad), **datamodule_kwargs(tmp_path / "cache"))


def test_missing_photos_unlabelled_rows_and_bad_files_are_reported_and_skipped_or_refused_with_strict(tmp_path):
    labels = make_labels_file(tmp_path, train=20, test=0)
    (tmp_path / "photos" / "train" / "broken.png").write_bytes(b"not a picture")
    rows = labels.read_text().splitlines()
    write_rows(
        labels, rows[0], rows[1:] + ["photos/train/gone.png,Red,train", "photos/train/001.png,,train", "photos/train/broken.png,Red,train"]
    )
    datamodule = GemDataModule(str(labels), **datamodule_kwargs(tmp_path / "cache"))
    datamodule.setup("fit")
    reasons = {Path(item.path).name: item.reason for item in datamodule.rejected["train"]}
    assert reasons["gone.png"].startswith("missing file (labels.csv line 22)")
    assert reasons["001.png"].startswith("no label (labels.csv line 23)")
    assert "labels.csv line 24" in reasons["broken.png"] and len(reasons) == 3
    assert len(datamodule.datasets["train"]) + len(datamodule.datasets["val"]) == 20

    strict = GemDataModule(str(labels), **datamodule_kwargs(tmp_path / "cache", bad_files="strict"))
    with pytest.raises(Exception, match=r"3 unusable file\(s\) .*bad_files is 'strict'"):
        strict.setup("fit")


def test_iterative_stratification_keeps_every_labels_share_and_identical_files_together():
    import random

    rng = random.Random(0)
    records = []
    for index in range(400):
        labels = tuple(sorted(rng.sample(range(6), rng.choice((1, 1, 2, 3))) + ([6] if index % 40 == 0 else [])))
        digest = f"{index // 2 if index < 40 else index:05d}"  # the first 40 files come in identical pairs
        records.append(ImageRecord(Path(f"{index}.png"), labels[0], digest, labels=labels))
    train, val = multilabel_split(records, 0.25, seed=3)
    assert sorted(train + val) == list(range(400)) and not set(train) & set(val)
    assert multilabel_split(records, 0.25, seed=3) == (train, val)
    for label in range(7):
        having = [i for i, r in enumerate(records) if label in r.labels]
        share = sum(i in set(val) for i in having) / len(having)
        assert share == pytest.approx(0.25, abs=0.06), f"label {label}: {share:.2f} of its photos in validation"
    side = {i: i in set(val) for i in range(400)}
    assert all(side[2 * pair] == side[2 * pair + 1] for pair in range(20)), "identical files split apart"


# Training and every path -------------------------------------------------------------------


@pytest.mark.slow
def test_fit_tunes_a_threshold_per_label_and_test_reports_average_precision(trained):
    checkpoint = torch.load(trained.checkpoint, map_location="cpu", weights_only=True)
    assert checkpoint["hyper_parameters"]["task"] == "multilabel"
    thresholds = checkpoint["state_dict"]["multilabel.thresholds"]
    assert thresholds.shape == (len(LABEL_COLOURS),) and not torch.allclose(thresholds, torch.full_like(thresholds, 0.5))
    assert "val/map" in read_metrics(trained.root / "fit")

    save_dir = trained.root / "test"
    run_cli(
        "test",
        "--ckpt_path",
        trained.checkpoint,
        "--data.data_dir",
        trained.labels,
        *COMMON,
        "--trainer.logger.init_args.save_dir",
        save_dir,
        env=trained.env,
        cwd=trained.root,
    )
    metrics = read_metrics(save_dir)
    assert metrics["test/samples"] == 25 and 0.7 < metrics["test/map"] <= 1 and 0 < metrics["test/f1"] <= 1
    report = next(save_dir.rglob("report-test"))
    with (report / "per_label.csv").open() as file:
        rows = list(csv.DictReader(file))
    assert [row["label"] for row in rows] == sorted(LABEL_COLOURS)
    assert sum(float(row["average_precision"]) for row in rows) / len(rows) == pytest.approx(metrics["test/map"], abs=1e-4)
    assert (report / "pr_curves.png").stat().st_size > 10_000


@pytest.mark.slow
def test_predict_the_api_and_onnx_runtime_answer_the_same_label_sets(trained):
    out = trained.root / "predict"
    for fmt in ("csv", "jsonl"):
        run_cli(
            "predict",
            "--ckpt_path",
            trained.checkpoint,
            "--data.predict_path",
            trained.photos[0].parent,
            *COMMON,
            "--predictions.output",
            out / f"{fmt}.{fmt}",
            "--predictions.format",
            fmt,
            "--trainer.logger",
            "false",
            env=trained.env,
            cwd=trained.root,
        )
    with (out / "csv.csv").open() as file:
        from_csv = {Path(row["path"]).name: row["labels"].split(";") if row["labels"] else [] for row in csv.DictReader(file)}
    from_jsonl = {Path(row["path"]).name: row["labels"] for row in map(json.loads, (out / "jsonl.jsonl").read_text().splitlines())}
    model, onnx = load_model(trained.checkpoint), load_model(trained.checkpoint, runtime="onnxruntime")
    from_api = {path.name: [name for name, _ in answer] for path, answer in zip(trained.photos, model.labels_many(trained.photos))}
    from_onnx = {path.name: [name for name, _ in answer] for path, answer in zip(trained.photos, onnx.labels_many(trained.photos))}
    assert from_csv == from_jsonl == from_api == from_onnx
    truth = {Path(path).name: names for path, names in label_sets_of(trained.labels, "test").items()}
    assert sum(set(from_api[name]) == truth[name] for name in truth) >= len(truth) // 2, "most label sets should be right"


@pytest.mark.slow
def test_a_stream_keeps_the_label_sets(trained):
    stream = trained.root / "stream"
    run_cli(
        "optimize",
        "--data_dir",
        trained.labels,
        "--output",
        stream,
        "--image_size",
        "32",
        "--num_workers",
        "1",
        env=trained.env,
        cwd=trained.root,
    )
    metrics = {}
    for source in (trained.labels, stream):
        save_dir = trained.root / f"test-{Path(source).name}"
        run_cli(
            "test",
            "--ckpt_path",
            trained.checkpoint,
            "--data.data_dir",
            source,
            *COMMON,
            "--trainer.logger.init_args.save_dir",
            save_dir,
            env=trained.env,
            cwd=trained.root,
        )
        metrics[source] = read_metrics(save_dir)
    for key in ("test/map", "test/map_micro", "test/f1", "test/samples"):
        assert metrics[stream][key] == pytest.approx(metrics[trained.labels][key], abs=1e-6), key


@pytest.mark.slow
def test_the_server_answers_the_label_set(trained):
    server = start_server(trained.checkpoint, trained.root / "serve.log", trained.env)
    try:
        model = load_model(trained.checkpoint)
        for photo in trained.photos[:4]:
            answer = server.predict(photo.read_bytes(), "image/png").json()
            assert [item["class"] for item in answer["labels"]] == [name for name, _ in model.labels(photo)]
            assert len(answer["predictions"]) == min(5, len(LABEL_COLOURS))
    finally:
        assert server.stop() == 0


@pytest.mark.slow
def test_evaluation_is_exact_under_ddp(trained):
    metrics = {}
    for processes in (1, 2):
        save_dir = trained.root / f"ddp-{processes}"
        devices = ["--config", REPO / "configs" / "ddp_cpu.yaml", "--trainer.devices", "2"] if processes == 2 else []
        run_cli(
            "test",
            *devices,
            "--ckpt_path",
            trained.checkpoint,
            "--data.data_dir",
            trained.labels,
            *COMMON,
            "--data.batch_size",
            "7",
            "--trainer.logger.init_args.save_dir",
            save_dir,
            env=trained.env,
            cwd=trained.root,
            fresh=True,  # DDP: a rank forked from the warm forkserver aborted now and then ("terminate called")
        )
        metrics[processes] = read_metrics(save_dir)
    assert metrics[1]["test/samples"] % 2 == 1, "the split should not divide evenly between 2 processes"
    for key in ("test/map", "test/map_micro", "test/f1", "test/loss", "test/samples"):
        assert math.isclose(metrics[2][key], metrics[1][key], abs_tol=1e-5), f"{key}: {metrics[2][key]} vs {metrics[1][key]}"


# Mistakes ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_checkpoint_evaluated_on_data_of_the_other_task_is_refused_in_one_line(trained, tmp_path):
    folder = train_tiny(tmp_path / "single")
    cases = [
        (
            trained.checkpoint,
            str(folder.test_dir.parent),
            "The checkpoint is multilabel (trained on a labels file) but data.data_dir is class folders",
        ),
        (
            folder.checkpoint,
            str(trained.labels),
            "The checkpoint is multiclass (trained on class folders) but data.data_dir is a labels file",
        ),
    ]
    for checkpoint, data, message in cases:
        result = run_cli("test", "--ckpt_path", checkpoint, "--data.data_dir", data, *COMMON, env=trained.env, cwd=tmp_path, check=False)
        assert result.returncode == 2 and message in result.stderr, result.stderr[-2000:]
        assert "Traceback" not in result.stderr


@pytest.mark.parametrize("option", ["--model.mixup_alpha=0.2", "--model.label_smoothing=0.1", "--model.class_weights=balanced"])
def test_single_label_settings_are_refused_for_a_labels_file_in_one_line(tmp_path, option):
    labels = make_labels_file(tmp_path, train=12, test=0)
    result = run_cli(
        "fit",
        "--data.data_dir",
        labels,
        *COMMON,
        *TINY_MODEL,
        option,
        "--trainer.max_epochs",
        "1",
        env=env_for(tmp_path),
        cwd=tmp_path,
        check=False,
    )
    name = option.removeprefix("--").partition("=")[0]
    assert result.returncode == 2 and f"error: {name}: for single-label data" in result.stderr, result.stderr[-2000:]


def test_loader_workers_receive_the_targets_of_hundreds_of_photos(tmp_path):
    """Forkserver workers get the dataset pickled: hundreds of target tensors would each need a file descriptor."""
    labels = make_labels_file(tmp_path, train=300, test=0)
    datamodule = GemDataModule(str(labels), **datamodule_kwargs(tmp_path / "cache", num_workers=1))
    datamodule.setup("fit")
    images, targets, _ = next(iter(datamodule.train_dataloader()))
    assert targets.dtype == torch.float32 and targets.shape == (len(images), len(LABEL_COLOURS))
    assert set(targets.sum(1).tolist()) <= {1.0, 2.0, 3.0}


# Label sets with a promise (calibrate, --inference.coverage) -----------------------------------------


def test_label_sets_hold_the_promised_share_of_true_labels_on_average():
    generator = torch.Generator().manual_seed(0)

    def photos(count: int, labels: int = 20) -> tuple[torch.Tensor, torch.Tensor]:
        """Calibrated-looking probabilities: true labels pushed up, the others down, by a strength per photo."""
        truth = torch.rand(count, labels, generator=generator) < 0.1
        truth[torch.arange(count), torch.randint(0, labels, (count,), generator=generator)] = True
        strength = 3 * torch.rand(count, 1, generator=generator)
        return (torch.randn(count, labels, generator=generator) + strength * (2 * truth.float() - 1)).sigmoid(), truth.float()

    test_probs, test_truth = photos(20000)
    thresholds = []
    for coverage in (0.8, 0.9, 0.95):
        shares = []
        for _ in range(10):
            threshold = label_coverage_threshold(*true_label_probs(*photos(2000)), coverage)
            held = (test_probs >= threshold) & test_truth.bool()
            shares.append(float((held.sum(1) / test_truth.sum(1)).mean()))
        assert abs(sum(shares) / len(shares) - coverage) < 0.01, (coverage, shares)
        thresholds.append(threshold)
    assert thresholds == sorted(thresholds, reverse=True)  # a larger promise, a lower threshold: larger sets
    probs = torch.tensor([[0.2, 0.9, 0.6], [0.1, 0.2, 0.3]])
    assert labels_above(probs, 0.5) == [[1, 2], []]
    assert label_coverage_threshold(*true_label_probs(probs, torch.tensor([[0, 1, 1], [1, 0, 0]])), 0.9) == 0.0  # 2 photos: every label


@pytest.fixture(scope="module")
def calibrated(trained: SimpleNamespace) -> SimpleNamespace:
    """The tiny multi-label checkpoint calibrated on its validation split."""
    path = trained.root / "calibrated.ckpt"
    fitted = run_cli(
        "calibrate", "--ckpt_path", trained.checkpoint, "--output", path, "--data.data_dir", trained.labels, *COMMON,
        env=trained.env, cwd=trained.root,
    )  # fmt: skip
    return SimpleNamespace(path=path, stdout=fitted.stdout)


def test_calibrate_gives_a_multilabel_checkpoint_label_sets_that_predict_and_the_api_answer(trained, calibrated):
    assert "Label sets (--inference.coverage) fitted on" in calibrated.stdout, calibrated.stdout[-2000:]
    summary = json.loads(calibrated.path.with_suffix(".calibration.json").read_text())
    assert summary["photos"] > 0 and 1 <= summary["labels_per_photo"] <= 3  # the generator's photos show one to three colours
    answered = {}
    for coverage in ("0.5", "0.95"):
        output = trained.root / f"sets-{coverage}.csv"
        run_cli(
            "predict", "--ckpt_path", calibrated.path, "--data.predict_path", trained.photos[0].parent, *COMMON,
            "--inference.coverage", coverage, "--predictions.output", output, "--trainer.logger", "false",
            env=trained.env, cwd=trained.root,
        )  # fmt: skip
        with output.open() as file:
            answered[coverage] = {
                Path(row["path"]).name: set(filter(None, row["prediction_set"].split(";"))) for row in csv.DictReader(file)
            }
    assert all(answered["0.5"][name] <= answered["0.95"][name] for name in answered["0.95"])  # a larger promise, larger sets
    api = load_model(calibrated.path, coverage=0.95).answer_many(trained.photos)
    assert {path.name: set(answer.prediction_set) for path, answer in zip(trained.photos, api)} == answered["0.95"]
    truth = {Path(path).name: names for path, names in label_sets_of(trained.labels, "test").items()}
    held = sum(len(answered["0.95"][name] & names) / len(names) for name, names in truth.items()) / len(truth)
    assert held >= 0.75, f"the sets at 0.95 hold {held:.0%} of the test photos' labels"


def test_label_set_calibration_refuses_what_cannot_work_in_one_line(trained, calibrated, tmp_path):
    calibrate = ["calibrate", "--ckpt_path", trained.checkpoint, "--data.data_dir", trained.labels, *COMMON]
    cases = [
        ([*calibrate, "--output", tmp_path / "a.ckpt", "--data.val_fraction", "0.5"], "distinct calibration photos"),
        ([*calibrate, "--output", tmp_path / "b.ckpt", "--calibration_dir", tmp_path], "--calibration_dir holds <Class>/ folders"),
    ]
    for args, message in cases:
        result = run_cli(*args, env=trained.env, cwd=trained.root, check=False)
        assert result.returncode == 2 and message in result.stderr, result.stderr[-2000:]
        assert "Traceback" not in result.stderr
    assert not list(tmp_path.glob("*.ckpt"))
    with pytest.raises(Exception, match="unknown answers single-label checkpoints"):
        load_model(calibrated.path, unknown=0.05)

"""Distillation: a student follows its teacher's soft predictions; a teacher of other classes is refused."""

from __future__ import annotations

import pytest
import torch
from conftest import COLOURS, make_dataset
from helpers import TINY_MODEL, TINY_NETWORK, run_cli
from test_cli import common

from gem_lightning.inference.api import load_model
from gem_lightning.training.distillation import distillation_loss


def fit(data_dir, tmp_path, name: str, *extra: str) -> str:
    """Trains a tiny VGG in-process; returns its last checkpoint."""
    from gem_lightning.cli.app import cli_main

    cli = cli_main(["fit", *common(tmp_path, name), "--data.data_dir", str(data_dir), *TINY_MODEL, "--trainer.max_epochs", "6",
                    "--model.optimizer.init_args.lr", "0.01", "--data.val_fraction", "0", *extra])  # fmt: skip
    return cli.trainer.checkpoint_callback.last_model_path


def test_distillation_loss_is_zero_only_when_the_student_agrees():
    teacher = torch.tensor([[4.0, 0.0, -2.0]])
    assert distillation_loss(teacher.clone(), teacher, temperature=2.0).item() == pytest.approx(0.0, abs=1e-6)
    assert distillation_loss(torch.tensor([[-2.0, 0.0, 4.0]]), teacher, temperature=2.0).item() > 1.0


@pytest.mark.slow
def test_student_learns_what_the_teacher_says_not_only_the_labels(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    names = list(COLOURS)
    truth = make_dataset(tmp_path / "truth", train_per_class=12, test_per_class=4)
    # The teacher learnt a rotated mapping: blue photos are "Green Stone", green ones "Red Stone", ...
    rotated = dict(zip(names, [COLOURS[names[(i + 2) % 3]] for i in range(3)]))
    teacher = fit(make_dataset(tmp_path / "rotated", train_per_class=12, test_per_class=0, classes=rotated), tmp_path, "teacher")
    student = fit(truth, tmp_path, "student", "--model.distillation.teacher", teacher, "--model.distillation.weight", "1.0")
    without = fit(truth, tmp_path, "alone", "--model.distillation.teacher", teacher, "--model.distillation.weight", "0.0")

    photos = sorted((truth / "test").rglob("*.jpg"))
    teacher_says = [ranked[0][0] for ranked in load_model(teacher).classify_many(photos)]
    true_labels = [photo.parent.name for photo in photos]
    assert sum(t != y for t, y in zip(teacher_says, true_labels)) >= 0.9 * len(photos)  # the teacher is wrong on purpose
    for checkpoint, follows in ((student, teacher_says), (without, true_labels)):
        said = [ranked[0][0] for ranked in load_model(checkpoint).classify_many(photos)]  # no teacher needed
        assert sum(s == f for s, f in zip(said, follows)) >= 0.9 * len(photos)


def test_teacher_with_other_classes_is_refused_in_one_line(tiny_dataset, tmp_path, cpu_env, monkeypatch):
    monkeypatch.chdir(tmp_path)
    other = make_dataset(tmp_path / "other", 4, 0, classes={"Cat": (1, 2, 3), "Dog": (200, 100, 0)})
    teacher = fit(other, tmp_path, "other")
    args = ["fit", *common(tmp_path, "student"), "--data.data_dir", str(tiny_dataset), *TINY_MODEL, "--model.distillation.teacher", teacher]
    result = run_cli(*args, env=cpu_env, cwd=tmp_path, check=False)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2 and len(errors) == 1 and "Traceback" not in result.stderr
    assert teacher in errors[0] and "trained on 2 classes (Cat, Dog" in errors[0]


def test_impossible_fine_tuning_setting_is_named():
    from gem_lightning.errors import UserInputError
    from gem_lightning.training.module import GemClassifier

    with pytest.raises(UserInputError, match="model.backbone_lr_ratio must be"):
        GemClassifier(["a", "b"], 64, network=TINY_NETWORK, backbone_lr_ratio=0.0)


@pytest.mark.parametrize(
    "setting, value, message",
    [
        ("weight", 1.5, "model.distillation.weight must be from 0 to 1"),
        ("temperature", 0.0, "model.distillation.temperature must be above 0"),
        ("teacher", None, "model.distillation.teacher is not set"),
        ("teacher", "nowhere.ckpt", "'nowhere.ckpt' does not exist"),
    ],
)
def test_impossible_distillation_settings_are_named(setting, value, message, tmp_path):
    from gem_lightning.errors import UserInputError
    from gem_lightning.training.distillation import Distillation

    teacher = tmp_path / "teacher.ckpt"
    teacher.write_bytes(b"")
    with pytest.raises(UserInputError, match=message):
        Distillation(**{"teacher": str(teacher), setting: value}).check()


@pytest.mark.slow
def test_student_sees_its_own_size_while_the_teacher_sees_the_batch_as_loaded(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = make_dataset(tmp_path / "gems", train_per_class=8, test_per_class=2)
    teacher = fit(data, tmp_path, "teacher", "--data.image_size", "48")
    seen: dict[str, tuple[int, ...]] = {}
    from gem_lightning.training.distillation import Teacher

    original = Teacher.logits
    monkeypatch.setattr(Teacher, "logits", lambda self, images: seen.setdefault("teacher", tuple(images.shape)) and original(self, images))
    student = fit(
        data,
        tmp_path,
        "student",
        "--data.image_size",
        "48",
        "--model.distillation.teacher",
        teacher,
        "--model.distillation.student_size",
        "32",
        "--trainer.max_epochs",
        "1",
    )
    assert seen["teacher"][-2:] == (48, 48)  # the batch as loaded, not upsampled from the student's size
    model = load_model(student)
    assert model.image_size == 32 and model.classifier.example_input_array.shape[-1] == 32  # the checkpoint predicts at 32 px
    assert len(model.classify(sorted((data / "test").rglob("*.jpg"))[0], top_k=2)) == 2


def test_balanced_class_weights_weigh_each_class_the_same_in_all():
    from gem_lightning.training.module import balanced_class_weights

    weights = balanced_class_weights([30, 10, 0, 20])
    assert weights.tolist() == pytest.approx([60 / 90, 2.0, 0.0, 1.0])
    assert (weights * torch.tensor([30, 10, 0, 20])).tolist() == pytest.approx([20, 20, 0, 20])


@pytest.mark.slow
def test_balanced_class_weights_follow_the_training_split(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = make_dataset(tmp_path / "gems", train_per_class=2, test_per_class=0)
    make_dataset(tmp_path / "more", train_per_class=10, test_per_class=0, classes={"Red Stone": COLOURS["Red Stone"]})
    for photo in (tmp_path / "more" / "train" / "Red Stone").iterdir():
        photo.rename(data / "train" / "Red Stone" / f"more {photo.name}")
    from gem_lightning.cli.app import cli_main

    cli = cli_main(
        [
            "fit",
            *common(tmp_path, "balanced"),
            "--data.data_dir",
            str(data),
            *TINY_MODEL,
            "--trainer.max_epochs",
            "1",
            "--data.val_fraction",
            "0",
            "--model.class_weights",
            "balanced",
        ]
    )
    counts = cli.datamodule.class_counts()
    assert sorted(counts) == [2, 2, 12]
    assert (cli.model.loss_weights * torch.tensor(counts, dtype=torch.float32)).tolist() == pytest.approx([16 / 3] * 3)

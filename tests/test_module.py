"""The LightningModule: metrics, hyperparameters in the checkpoint, prediction rows."""

from __future__ import annotations

import pytest
import torch
from conftest import datamodule_kwargs
from helpers import TINY_NETWORK
from lightning.pytorch import Trainer
from torchmetrics.functional.classification import multiclass_accuracy, multiclass_f1_score

from gem_lightning.data.datamodule import GemDataModule
from gem_lightning.training.module import GemClassifier


def tiny_model(class_names, **overrides) -> GemClassifier:
    return GemClassifier(class_names, 32, **{"network": TINY_NETWORK, **overrides})


def trainer(tmp_path, **overrides) -> Trainer:
    kwargs = dict(
        accelerator="cpu", max_epochs=1, logger=False, enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path
    )
    return Trainer(**{**kwargs, **overrides})


def test_forward_takes_uint8_and_normalises_inside():
    model = tiny_model(["a", "b", "c"]).eval()
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    assert torch.allclose(model(images), model(images.float()))
    assert model(images).shape == (4, 3)


def test_refuses_fewer_than_two_classes():
    with pytest.raises(ValueError, match="at least two classes"):
        tiny_model(["only"])


def test_hflip_tta_averages_an_image_and_its_mirror():
    model = tiny_model(["a", "b"], tta="hflip").eval()
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    expected = (model(images).softmax(-1) + model(images.flip(-1)).softmax(-1)) / 2
    assert torch.allclose(model.predict_proba(images), expected, atol=1e-6)


def test_dihedral_tta_averages_the_eight_views_and_cannot_tell_them_apart():
    model = tiny_model(["a", "b"], tta="dihedral").eval()
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    views = [v.rot90(k, dims=(-2, -1)) for v in (images, images.flip(-1)) for k in range(4)]
    expected = torch.stack([model(v).softmax(-1) for v in views]).mean(0)
    probs = model.predict_proba(images)
    assert torch.allclose(probs, expected, atol=1e-6)
    assert not torch.allclose(probs, model(images).softmax(-1), atol=1e-4)  # the views differ
    assert torch.allclose(model.predict_proba(images.rot90(1, dims=(-2, -1)).flip(-1)), probs, atol=1e-5)


def test_an_inference_engine_answers_predict_proba_until_it_is_removed():
    """How ``--inference.runtime onnxruntime`` swaps the network for an ONNX Runtime session, and back."""
    model = tiny_model(["a", "b"]).eval()
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    from_network = model.predict_proba(images)
    from_engine = torch.tensor([[0.25, 0.75], [1.0, 0.0]])
    model.set_inference_engine(lambda batch: from_engine)
    assert torch.equal(model.predict_proba(images), from_engine)
    model.set_inference_engine(None)
    assert torch.equal(model.predict_proba(images), from_network)


def test_validation_metrics_equal_a_direct_computation(tiny_dataset, isolated_cache, tmp_path):
    datamodule = GemDataModule(str(tiny_dataset), **datamodule_kwargs(isolated_cache))
    model = tiny_model(datamodule.class_names)
    [metrics] = trainer(tmp_path).validate(model, datamodule=datamodule, verbose=False)
    probs, targets = [], []
    model.eval()
    with torch.no_grad():
        for images, labels, _ in datamodule.val_dataloader():
            probs.append(model.predict_proba(images))
            targets.append(labels)
    probs, targets = torch.cat(probs), torch.cat(targets)
    assert metrics["val/samples"] == len(targets) == 9
    assert metrics["val/acc"] == pytest.approx(multiclass_accuracy(probs, targets, 3, average="micro").item(), abs=1e-6)
    assert metrics["val/f1"] == pytest.approx(multiclass_f1_score(probs, targets, 3, average="macro").item(), abs=1e-6)
    assert metrics["val/acc_top5"] == 1.0  # top-5 of 3 classes always hits


def test_checkpoint_alone_rebuilds_the_model(tiny_dataset, isolated_cache, tmp_path):
    datamodule = GemDataModule(str(tiny_dataset), **datamodule_kwargs(isolated_cache))
    model = tiny_model(datamodule.class_names, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    fit = trainer(tmp_path, max_steps=2)
    fit.fit(model, datamodule=datamodule)
    path = tmp_path / "model.ckpt"
    fit.save_checkpoint(path)
    hparams = torch.load(path, weights_only=True)["hyper_parameters"]
    assert hparams["class_names"] == ["Blue Stone", "Green Stone", "Red Stone"]
    assert hparams["image_size"] == 32 and hparams["mean"] == (0.5, 0.5, 0.5) and hparams["network"]["init_args"]["channels"] == [8, 16]
    restored = GemClassifier.load_from_checkpoint(path).eval()
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    assert torch.allclose(restored(images), model.eval()(images))


def test_predict_step_returns_paths_and_ranked_class_names(tiny_dataset, isolated_cache, tmp_path):
    datamodule = GemDataModule(predict_path=str(tiny_dataset / "test"), **datamodule_kwargs(isolated_cache))
    model = tiny_model(["Blue Stone", "Green Stone", "Red Stone"], top_k=2)
    batches = trainer(tmp_path).predict(model, datamodule=datamodule)
    rows = [row for batch in batches for row in batch["predictions"]]
    assert len(rows) == 9
    for row in rows:
        assert row["path"].endswith(".jpg") and len(row["classes"]) == 2
        assert set(row["classes"]) <= set(model.class_names)
        assert row["probs"][0] >= row["probs"][1] and 0 <= row["probs"][1] <= 1


def test_optimizer_and_scheduler_are_injectable():
    model = tiny_model(
        ["a", "b"],
        optimizer=lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9),
        lr_scheduler=lambda optimizer: torch.optim.lr_scheduler.StepLR(optimizer, step_size=2),
    )
    config = model.configure_optimizers()
    assert isinstance(config["optimizer"], torch.optim.SGD)
    assert config["lr_scheduler"]["interval"] == "epoch"


def test_mixup_and_cutmix_train_on_soft_targets(tiny_dataset, isolated_cache, tmp_path):
    datamodule = GemDataModule(str(tiny_dataset), **datamodule_kwargs(isolated_cache))
    model = tiny_model(datamodule.class_names, mixup_alpha=0.4, cutmix_alpha=1.0)
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    mixed, soft = model.batch_mix(images.float(), torch.tensor([0, 1, 2, 0]))
    assert soft.shape == (4, 3) and torch.allclose(soft.sum(-1), torch.ones(4))
    trainer(tmp_path, max_steps=2).fit(model, datamodule=datamodule)
    assert tiny_model(["a", "b"]).batch_mix is None


def test_warmup_cosine_follows_the_run_length(tiny_dataset, isolated_cache, tmp_path):
    from gem_lightning.training.schedules import WarmupCosineLR

    datamodule = GemDataModule(str(tiny_dataset), **datamodule_kwargs(isolated_cache))
    model = tiny_model(
        datamodule.class_names,
        optimizer=lambda p: torch.optim.AdamW(p, lr=0.01),
        lr_scheduler=lambda o: WarmupCosineLR(o, warmup_fraction=0.25, start_factor=0.1, final_factor=0.0),
    )
    run = trainer(tmp_path, max_epochs=2)  # 21 train images / batch 8 = 3 steps an epoch, 6 in all
    run.fit(model, datamodule=datamodule)
    scheduler = run.lr_scheduler_configs[0]
    assert scheduler.interval == "step" and scheduler.scheduler.total_steps == 6
    assert [round(scheduler.scheduler.factor(s), 3) for s in (0, 1, 6)] == [0.1, 0.7, 0.0]
    assert run.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-9)


def test_metric_collection_macro_f1_is_not_mixed_with_micro_accuracy():
    """torchmetrics' compute groups merged metrics whose states matched after the first batch, so a
    first batch that top-1 and top-5 got equally wrong made macro F1 report the top-5 states."""
    from gem_lightning.training.metrics import classification_metrics

    torch.manual_seed(0)
    targets = torch.arange(12).repeat_interleave(10)  # sorted by class, like an unshuffled test set
    logits = torch.randn(120, 12) + 4 * torch.nn.functional.one_hot(targets % 4, 12)
    logits[:32] = torch.linspace(0, 1, 12) - 10 * torch.nn.functional.one_hot(targets[:32], 12)  # first batch: all wrong, even in top-5
    probs = logits.softmax(dim=-1)
    metrics = classification_metrics(12, "val/")
    for start in range(0, 120, 32):
        metrics.update(probs[start : start + 32], targets[start : start + 32])
    computed = metrics.compute()
    assert computed["val/f1"] == pytest.approx(multiclass_f1_score(probs, targets, 12, average="macro").item(), abs=1e-6)
    assert computed["val/acc"] == pytest.approx(multiclass_accuracy(probs, targets, 12, average="micro").item(), abs=1e-6)


def test_compiled_model_keeps_checkpoint_names():
    plain, compiled = tiny_model(["a", "b"]), tiny_model(["a", "b"], compile=True)
    assert plain.state_dict().keys() == compiled.state_dict().keys()

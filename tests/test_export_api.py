"""Exporting a checkpoint (TorchScript, ONNX) and classifying photos through the Python API."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import GEMSTONES, datamodule_kwargs, make_dataset, requires_gemstones
from helpers import TINY_NETWORK
from lightning.pytorch import Trainer, seed_everything

from gem_lightning.cli.commands.export import main
from gem_lightning.data.datamodule import GemDataModule
from gem_lightning.inference import api
from gem_lightning.inference.export import export_checkpoint
from gem_lightning.training.module import GemClassifier

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::DeprecationWarning")  # torch.jit and the legacy ONNX exporter


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """A tiny model trained for one epoch and saved as a checkpoint, with a batch of its validation images."""
    root = tmp_path_factory.mktemp("export")
    seed_everything(0)
    datamodule = GemDataModule(str(make_dataset(root / "gems")), **datamodule_kwargs(root / "cache"))
    model = GemClassifier(datamodule.class_names, 32, network=TINY_NETWORK)
    trainer = Trainer(
        max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False
    )
    trainer.fit(model, datamodule=datamodule)
    checkpoint = root / "model.ckpt"
    trainer.save_checkpoint(checkpoint)
    images, _, _ = next(iter(datamodule.val_dataloader()))
    return SimpleNamespace(root=root, datamodule=datamodule, checkpoint=checkpoint, images=images)


def checkpoint_probabilities(checkpoint: Path, images: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return GemClassifier.load_from_checkpoint(checkpoint, map_location="cpu").eval().predict_proba(images)


def test_torchscript_matches_the_checkpoint_for_uint8_and_float_input(trained, tmp_path):
    written = export_checkpoint(trained.checkpoint, tmp_path, formats=("torchscript",))
    assert set(written) == {"torchscript", "classes"}
    assert written["torchscript"] == tmp_path / "model.torchscript.pt"
    scripted = torch.jit.load(str(written["torchscript"]))
    expected = checkpoint_probabilities(trained.checkpoint, trained.images)
    for images in (trained.images, trained.images.float()):
        with torch.inference_mode():
            probs = scripted(images)
        assert torch.equal(probs.argmax(-1), expected.argmax(-1))
        torch.testing.assert_close(probs, expected, atol=1e-4, rtol=0)
    assert scripted(trained.images[:1]).shape == (1, 3)  # batch size is free


def test_onnx_model_is_valid_with_a_dynamic_batch_axis(trained, tmp_path):
    import onnx

    written = export_checkpoint(trained.checkpoint, tmp_path, formats=("onnx",))
    model = onnx.load(str(written["onnx"]))
    onnx.checker.check_model(model)
    [graph_input] = model.graph.input
    assert graph_input.name == "images"
    assert graph_input.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    dims = graph_input.type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and [d.dim_value for d in dims[1:]] == [3, 32, 32]
    assert [o.name for o in model.graph.output] == ["probabilities"]


def test_onnx_numerics_match_the_checkpoint(trained, tmp_path):
    import onnxruntime

    written = export_checkpoint(trained.checkpoint, tmp_path, formats=("onnx",))
    session = onnxruntime.InferenceSession(str(written["onnx"]))
    [probs] = session.run(None, {"images": trained.images.float().numpy()})
    expected = checkpoint_probabilities(trained.checkpoint, trained.images)
    torch.testing.assert_close(torch.from_numpy(probs), expected, atol=1e-4, rtol=0)


@requires_gemstones
def test_onnx_runtime_equals_the_checkpoint_on_real_photos(trained, tmp_path):
    """Real photos, decoded as ``predict`` decodes them (the RGBA PNGs named .jpg, the large and the
    small ones among them): ONNX Runtime's probabilities are the checkpoint's."""
    import onnxruntime

    photos = sorted(p for p in (GEMSTONES / "test").rglob("*") if p.is_file())[::18][:24]
    model = api.load_model(trained.checkpoint)
    images = torch.stack([model.preprocess(photo) for photo in photos])
    written = export_checkpoint(trained.checkpoint, tmp_path, formats=("onnx",))
    [probs] = onnxruntime.InferenceSession(str(written["onnx"])).run(None, {"images": images.float().numpy()})
    expected = checkpoint_probabilities(trained.checkpoint, images)
    assert len(photos) >= 16 and probs.shape == expected.shape
    torch.testing.assert_close(torch.from_numpy(probs), expected, atol=1e-5, rtol=1e-4)


def test_classes_json_lists_the_classes_in_output_order(trained, tmp_path):
    written = export_checkpoint(trained.checkpoint, tmp_path, formats=("torchscript",))
    described = json.loads(written["classes"].read_text())
    assert described["class_names"] == ["Blue Stone", "Green Stone", "Red Stone"]
    assert described["image_size"] == 32


def test_missing_onnx_package_fails_fast_with_the_install_hint(trained, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)  # makes `import onnx` raise ImportError
    with pytest.raises(ImportError, match=r"pip install 'gem-lightning\[onnx\]'"):
        export_checkpoint(trained.checkpoint, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(SystemExit) as exit_info:
        main([str(trained.checkpoint), "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2


def test_unknown_format_is_refused(trained, tmp_path):
    with pytest.raises(ValueError, match="Unknown export format"):
        export_checkpoint(trained.checkpoint, tmp_path, formats=("tflite",))


def test_command_line_exports_every_format_by_default(trained, tmp_path, capsys):
    assert main([str(trained.checkpoint), "--out", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["classes.json", "model.onnx", "model.torchscript.pt"]
    assert f"torchscript: {tmp_path / 'model.torchscript.pt'}" in capsys.readouterr().out


def test_load_model_takes_a_str_path(trained):
    model = api.load_model(str(trained.checkpoint))
    assert model.class_names == trained.datamodule.class_names
    assert model.image_size == 32 and not model.classifier.training


def test_api_equals_the_predict_step(trained):
    """The API's answers equal ``predict``'s, file for file, for the whole test folder."""
    datamodule = GemDataModule(predict_path=str(trained.root / "gems" / "test"), **datamodule_kwargs(trained.root / "cache"))
    classifier = GemClassifier.load_from_checkpoint(trained.checkpoint, map_location="cpu")
    trainer = Trainer(accelerator="cpu", logger=False, enable_progress_bar=False)
    rows = [row for batch in trainer.predict(classifier, datamodule=datamodule) for row in batch["predictions"]]
    ranked = api.load_model(trained.checkpoint).classify_many([row["path"] for row in rows], batch_size=4)
    assert len(ranked) == len(rows) == 9
    for row, answer in zip(rows, ranked):
        assert [name for name, _ in answer] == row["classes"]
        assert [prob for _, prob in answer] == pytest.approx(row["probs"], abs=1e-6)
    single = api.classify(rows[0]["path"], trained.checkpoint, top_k=2)
    assert [name for name, _ in single] == rows[0]["classes"][:2]
    assert [prob for _, prob in single] == pytest.approx(rows[0]["probs"][:2], abs=1e-6)

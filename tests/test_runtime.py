"""``runtime: torch | onnxruntime | onnxruntime-int8`` for the Python API, ``predict`` and ``serve``.

A tiny network on small generated photos: the ONNX Runtime answers equal torch's (same top-k,
probabilities within 1e-4), the ONNX model is exported once per checkpoint and cached beside it
(a changed checkpoint is exported again; a read-only folder falls back to the user's cache), int8
stores what it loses and is refused beyond half a point, and a missing package is one line.
"""

from __future__ import annotations

import csv
import json
import shutil
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from helpers import run_cli, train_tiny
from lightning.pytorch import Trainer

from gem_lightning.errors import UserInputError
from gem_lightning.inference import export as export_module
from gem_lightning.inference import int8, onnx_model, runtime
from gem_lightning.inference.api import load_model
from gem_lightning.training.module import GemClassifier

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::DeprecationWarning", "ignore::UserWarning")
ATOL = 1e-4
NO_WORKERS = ("--data.loader.num_workers", "0")  # the runtime is what differs: no worker forkserver to start (an interpreter's imports)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """A tiny model (dihedral TTA) trained for one epoch; 60 test photos in class folders."""
    return train_tiny(tmp_path_factory.mktemp("runtime"), test_per_class=20, tta="dihedral")


@pytest.fixture
def checkpoint(trained, tmp_path: Path) -> Path:
    """The trained checkpoint copied into this test's folder: its ONNX cache starts empty."""
    return Path(shutil.copy(trained.checkpoint, tmp_path / "model.ckpt"))


def assert_same_ranking(got, expected, atol: float = ATOL) -> None:
    for row, reference in zip(got, expected, strict=True):
        assert [name for name, _ in row] == [name for name, _ in reference]
        assert [p for _, p in row] == pytest.approx([p for _, p in reference], abs=atol)


def count_exports(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Record every ONNX export from now on."""
    exported: list[Path] = []
    original = export_module.export_onnx

    def recording(model, size, path):
        exported.append(path)
        return original(model, size, path)

    monkeypatch.setattr(export_module, "export_onnx", recording)
    return exported


def test_onnxruntime_answers_as_torch_with_tta_and_the_export_is_cached(checkpoint, trained, monkeypatch):
    torch_answers = load_model(checkpoint).classify_many(trained.photos, top_k=3)
    exported = count_exports(monkeypatch)
    onnx_model = load_model(checkpoint, runtime="onnxruntime")
    assert onnx_model.runtime == "onnxruntime" and onnx_model._probabilities.tta == "dihedral"
    assert_same_ranking(onnx_model.classify_many(trained.photos, top_k=3), torch_answers)
    assert exported and (checkpoint.parent / "model.ckpt.onnx").is_file()
    sidecar = json.loads((checkpoint.parent / "model.ckpt.onnx.json").read_text())
    assert sidecar["checkpoint_sha256"] == runtime.file_sha256(checkpoint) and sidecar["max_abs_difference"] <= ATOL
    exported.clear()
    assert_same_ranking(load_model(checkpoint, runtime="onnxruntime").classify_many(trained.photos[:5], top_k=3), torch_answers[:5])
    assert exported == [], "the second load exported the checkpoint again"


def test_a_changed_checkpoint_is_exported_again(checkpoint, trained, monkeypatch):
    load_model(checkpoint, runtime="onnxruntime")
    classifier = GemClassifier.load_from_checkpoint(checkpoint, map_location="cpu")
    with torch.no_grad():
        for parameter in classifier.parameters():
            parameter.mul_(1.5)
    trainer = Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.strategy.connect(classifier)
    trainer.save_checkpoint(checkpoint)  # same path, new weights
    exported = count_exports(monkeypatch)
    answers = load_model(checkpoint, runtime="onnxruntime").classify_many(trained.photos[:6], top_k=3)
    assert len(exported) == 1
    assert_same_ranking(answers, load_model(checkpoint).classify_many(trained.photos[:6], top_k=3))
    assert json.loads((checkpoint.parent / "model.ckpt.onnx.json").read_text())["checkpoint_sha256"] == runtime.file_sha256(checkpoint)


def test_a_read_only_checkpoint_folder_caches_in_the_user_cache(checkpoint, isolated_cache, monkeypatch):
    original = tempfile.TemporaryDirectory

    def read_only_beside_checkpoint(*args, dir=None, **kwargs):
        if Path(dir) == checkpoint.parent:
            raise PermissionError(13, "Permission denied")
        return original(*args, dir=dir, **kwargs)

    monkeypatch.setattr(onnx_model.tempfile, "TemporaryDirectory", read_only_beside_checkpoint)
    load_model(checkpoint, runtime="onnxruntime")
    sha256 = runtime.file_sha256(checkpoint)
    assert not (checkpoint.parent / "model.ckpt.onnx").exists()
    assert (isolated_cache / "onnx" / sha256[:16] / "model.onnx").is_file()
    assert runtime.is_cached(checkpoint, "onnxruntime")


def test_int8_stores_what_it_loses_and_is_refused_beyond_half_a_point(checkpoint, trained, monkeypatch):
    with pytest.raises(UserInputError, match="int8_images"):
        load_model(checkpoint, runtime="onnxruntime-int8")
    with pytest.raises(UserInputError, match="at least 40"):
        load_model(checkpoint, runtime="onnxruntime-int8", int8_images=trained.photos[0].parent)  # 20 photos
    monkeypatch.setattr(int8, "MAX_INT8_LOSS", -1.0)  # any result is too much
    # 60 photos: 16 calibrate (half, down to whole batches of 16), 44 measure
    with pytest.raises(UserInputError, match="loses too much on 44 held-out photos"):
        load_model(checkpoint, runtime="onnxruntime-int8", int8_images=trained.test_dir)
    assert not (checkpoint.parent / "model.ckpt.int8.onnx").exists(), "a refused int8 model was cached"
    monkeypatch.undo()
    model = load_model(checkpoint, runtime="onnxruntime-int8", int8_images=trained.test_dir)
    measurement = json.loads((checkpoint.parent / "model.ckpt.int8.onnx.json").read_text())["measurement"]
    assert measurement["images"] == 44 and measurement["fp32_accuracy"] is not None  # class folders: accuracy measured
    reference = load_model(checkpoint).classify_many(trained.photos)
    agreement = sum(a[0][0] == b[0][0] for a, b in zip(model.classify_many(trained.photos), reference)) / len(reference)
    assert agreement >= 0.9
    assert load_model(checkpoint, runtime="onnxruntime-int8").runtime == "onnxruntime-int8"  # the stored model, no photos needed


def test_a_missing_package_or_an_unknown_runtime_is_one_line(checkpoint, monkeypatch):
    with pytest.raises(UserInputError, match="runtime must be one of torch, onnxruntime, onnxruntime-int8"):
        load_model(checkpoint, runtime="tensorrt")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails as if not installed
    with pytest.raises(UserInputError, match=r"onnxruntime is missing\): pip install 'gem-lightning\[onnxruntime\]'"):
        load_model(checkpoint, runtime="onnxruntime")


@pytest.mark.slow
def test_predict_with_onnxruntime_writes_what_torch_writes(checkpoint, trained, tmp_path, cpu_env):
    def predictions(runtime_name: str) -> dict[str, list]:
        output = tmp_path / f"{runtime_name}.csv"
        run_cli("predict", "--ckpt_path", checkpoint, "--data.predict_path", trained.test_dir, "--model.tta", "dihedral",
                "--inference.runtime", runtime_name, "--predictions.output", output, "--trainer.logger", "false",
                "--trainer.enable_progress_bar", "false", *NO_WORKERS, env=cpu_env, cwd=tmp_path)  # fmt: skip
        return {row["path"]: [(row[f"class_{i}"], float(row[f"prob_{i}"])) for i in (1, 2, 3)] for row in csv.DictReader(output.open())}

    with_torch, with_onnx = predictions("torch"), predictions("onnxruntime")
    assert sorted(with_torch) == sorted(with_onnx) and len(with_torch) == len(trained.photos)
    assert_same_ranking([with_onnx[path] for path in with_torch], list(with_torch.values()))
    refused = run_cli("fit", "--data.data_dir", trained.root / "gems", "--inference.runtime", "onnxruntime", "--trainer.max_epochs", "1",
                      *NO_WORKERS, env=cpu_env, cwd=tmp_path, check=False)  # fmt: skip
    assert refused.returncode == 2 and "fit trains with torch" in refused.stderr
    assert "Traceback" not in refused.stderr


@pytest.mark.slow
def test_serve_with_onnxruntime_answers_as_torch(checkpoint, trained, tmp_path):
    from serving import start_server
    from test_serve import ranked, server_env

    expected = load_model(checkpoint).classify_many(trained.photos[:12], top_k=3)
    server = start_server(checkpoint, tmp_path / "serve.log", server_env(tmp_path), "--runtime", "onnxruntime", "--max_batch_size", "4")
    try:
        served = [ranked(server.predict(photo.read_bytes(), query="?top_k=3")) for photo in trained.photos[:12]]
        assert_same_ranking(served, expected)
        assert server.predict(b"not an image").status == 422
    finally:
        assert server.stop() == 0, server.log.read_text()
    assert "(onnxruntime, batches of up to 4)" in server.log.read_text()
    assert (checkpoint.parent / "model.ckpt.onnx").is_file()  # made by serve before its worker started


@pytest.mark.slow
def test_serve_refuses_int8_without_photos_in_one_line(checkpoint, tmp_path):
    from test_serve import server_env

    done = run_cli("serve", "--ckpt_path", checkpoint, "--runtime", "onnxruntime-int8", env=server_env(tmp_path), cwd=tmp_path, check=False)
    assert done.returncode == 2, done.stdout + done.stderr
    [line] = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert "give int8_images" in line and "Traceback" not in done.stderr


def test_tensorflow_same_padding_is_fixed_for_the_export_without_changing_the_output():
    """timm's ``Conv2dSame`` pads by the input's size at run time; the runtime's export fixes it for S."""
    from gem_lightning.models import TimmSpec
    from gem_lightning.models.classifier import ImageClassifier

    torch.manual_seed(0)
    network = ImageClassifier(TimmSpec(name="tf_efficientnet_lite0").build(3, 40), (0.5,) * 3, (0.5,) * 3).eval()
    images = torch.randint(0, 256, (2, 3, 40, 40), dtype=torch.uint8)
    with torch.no_grad():
        before = network.probabilities(images)
        assert runtime.static_same_padding(network, 40) == 5
        torch.testing.assert_close(network.probabilities(images), before, atol=1e-6, rtol=0)
    assert not any(type(module).__name__ == "Conv2dSame" for module in network.modules())


def test_temperature_scaling_applies_to_the_average_of_the_tta_views_as_in_torch(checkpoint, trained):
    """``calibrate``'s temperature acts on the averaged TTA probabilities: outside the ONNX graph, as in torch."""
    classifier = GemClassifier.load_from_checkpoint(checkpoint, map_location="cpu").eval()
    classifier.model.temperature = 2.5
    images = torch.stack([load_model(checkpoint).preprocess(photo) for photo in trained.photos[:8]])
    onnx = runtime.onnx_probabilities(classifier, checkpoint, "onnxruntime")
    with torch.inference_mode():
        torch.testing.assert_close(onnx(images), classifier.predict_proba(images), atol=ATOL, rtol=0)

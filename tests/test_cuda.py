"""The CUDA paths: training, evaluation and prediction on a GPU with mixed precision and channels-last,
augmentation on the device, the Python API, and DDP with NCCL on one GPU.

Every test here is marked ``cuda`` and skips without a CUDA GPU (``python -m pytest -m cuda`` runs
them alone; ``benchmarks/gpu_check.py`` does so on a GPU).
"""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import helpers
import pytest
import torch
from conftest import REPO, datamodule_kwargs, make_dataset
from test_batch_augment import OFF, SIZE, assert_same_distribution, gradient_image, line_image, moments

from gem_lightning.data.augmentation import Augmentation
from gem_lightning.data.batch_augment import BatchAugment

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run these with `python -m pytest -m cuda` on one)"),
]

TINY_MODEL = [*helpers.TINY_MODEL, "--model.network.batch_norm", "true"]


def gpu_cli(*args: str, tmp_path: Path):
    """``main.py <args>`` in this process on the GPU, small images, quiet; the CLI object."""
    from gem_lightning.cli.app import cli_main

    subcommand, *rest = args
    return cli_main([
        subcommand, "--trainer.accelerator", "gpu", "--trainer.devices", "1", "--trainer.enable_progress_bar", "false",
        "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"), "--data.image_size", "32", "--data.batch_size", "8",
        "--data.loader.num_workers", "2", *rest,
    ])  # fmt: skip


@pytest.mark.parametrize("augment_on", ["loader", "device"])
@pytest.mark.parametrize("precision", ["16-mixed", "bf16-mixed"])
def test_fit_validate_test_predict_on_the_gpu(precision, augment_on, tiny_dataset, tmp_path):
    data = ["--data.data_dir", str(tiny_dataset), "--trainer.precision", precision, "--model.channels_last", "true"]
    torch.cuda.reset_peak_memory_stats()
    fit = gpu_cli("fit", *data, *TINY_MODEL, "--data.augment_on", augment_on, "--trainer.max_epochs", "3",
                  "--checkpoint.dirpath", str(tmp_path / "ckpt"), tmp_path=tmp_path)  # fmt: skip
    trainer = fit.trainer
    assert trainer.strategy.root_device.type == "cuda" and trainer.precision == precision
    assert torch.cuda.max_memory_allocated() > 0, "nothing was allocated on the GPU"
    assert (getattr(trainer.precision_plugin, "scaler", None) is not None) == (precision == "16-mixed"), (
        "fp16 needs a loss scaler, bf16 none"
    )
    assert trainer.global_step == 3 * math.ceil(24 / 8)  # 30 training images, 20 % for validation
    assert math.isfinite(float(trainer.callback_metrics["train/loss_epoch"]))
    val_acc = float(trainer.callback_metrics["val/acc"])

    ckpt = str(tmp_path / "ckpt" / "last.ckpt")
    validated = gpu_cli("validate", *data, "--ckpt_path", ckpt, tmp_path=tmp_path)
    assert validated.trainer.strategy.root_device.type == "cuda"
    assert float(validated.trainer.callback_metrics["val/acc"]) == pytest.approx(val_acc, abs=1e-6)
    tested = gpu_cli("test", *data, "--ckpt_path", ckpt, tmp_path=tmp_path)
    assert float(tested.trainer.callback_metrics["test/samples"]) == 9

    out = tmp_path / "predictions.csv"
    gpu_cli("predict", "--ckpt_path", ckpt, "--trainer.precision", precision, "--data.predict_path", str(tiny_dataset / "test"),
            "--predictions.output", str(out), tmp_path=tmp_path)  # fmt: skip
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 9 and all(row["prediction"] in {"Blue Stone", "Green Stone", "Red Stone"} for row in rows)


def test_channels_last_reaches_the_convolutions_on_the_gpu():
    from gem_lightning.training.module import GemClassifier

    model = GemClassifier(["a", "b"], 32, network=helpers.TINY_NETWORK).cuda()
    seen = []
    first_conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    first_conv.register_forward_hook(lambda module, inputs, output: seen.append((inputs[0], output)))
    with torch.autocast("cuda", dtype=torch.bfloat16):
        model(torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8, device="cuda"))
    ((inputs, output),) = seen
    assert inputs.is_cuda and inputs.is_contiguous(memory_format=torch.channels_last)
    assert output.dtype == torch.bfloat16 and output.is_contiguous(memory_format=torch.channels_last)


def test_loader_batches_are_pinned_and_the_device_augments_them(tiny_dataset, isolated_cache):
    from gem_lightning.data.datamodule import GemDataModule

    datamodule = GemDataModule(str(tiny_dataset), augment_on="device", **datamodule_kwargs(isolated_cache, num_workers=1))
    assert datamodule.loader.pinned, "pin_memory defaults to on when CUDA is available"
    datamodule.prepare_data()
    datamodule.setup("fit")
    images, _, _ = next(iter(datamodule.train_dataloader()))
    assert images.is_pinned() and images.dtype == torch.uint8
    augmented = datamodule.batch_augment(images.cuda(non_blocking=True))
    assert augmented.is_cuda and augmented.shape[-2:] == (32, 32) and augmented.dtype == torch.float32


def test_batch_augment_on_the_gpu_equals_the_cpu_without_randomness():
    images = gradient_image().unsqueeze(0).repeat(4, 1, 1, 1)
    augment = BatchAugment(OFF, SIZE)
    torch.testing.assert_close(augment(images.cuda()).cpu(), augment(images), atol=1e-3, rtol=0)


def test_batch_augment_on_the_gpu_draws_the_cpu_distribution():
    augment = BatchAugment(Augmentation(fill=(0, 0, 0)), SIZE)  # the seed's: rotation, zoom, shift, shear, flips
    batch = line_image().unsqueeze(0).repeat(400, 1, 1, 1)
    torch.manual_seed(0)
    cpu = moments(augment(batch))
    gpu = moments(augment(batch.cuda()).cpu())
    assert gpu[3].std() > 5, "the line rotates"
    for a, b in zip(cpu, gpu):
        assert_same_distribution(a, b)


def test_api_on_the_gpu_agrees_with_the_cpu(tmp_path):
    from lightning.pytorch import Trainer, seed_everything

    from gem_lightning.data.datamodule import GemDataModule
    from gem_lightning.data.datasets import find_predict_files
    from gem_lightning.inference import api
    from gem_lightning.training.module import GemClassifier

    seed_everything(0)
    data = make_dataset(tmp_path / "gems")
    datamodule = GemDataModule(str(data), **datamodule_kwargs(tmp_path / "cache"))
    model = GemClassifier(datamodule.class_names, 32, network=helpers.TINY_NETWORK)
    trainer = Trainer(max_epochs=2, accelerator="gpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.fit(model, datamodule=datamodule)
    ckpt = tmp_path / "model.ckpt"
    trainer.save_checkpoint(ckpt)
    photos = find_predict_files(str(data / "test"))
    on_gpu = api.load_model(ckpt, device="cuda")
    assert next(on_gpu.classifier.parameters()).is_cuda
    gpu, cpu = on_gpu.classify_many(photos), api.load_model(ckpt).classify_many(photos)
    assert len(gpu) == len(photos) == 9
    for g, c in zip(gpu, cpu):
        assert g[0][0] == c[0][0] or c[0][1] - c[1][1] < 0.02, (g, c)  # the same top class, unless a near-tie
        g, c = dict(g), dict(c)
        assert g.keys() == c.keys()
        for name in c:  # TF32 convolutions on the GPU: close, not equal
            assert g[name] == pytest.approx(c[name], abs=1e-2), (name, g, c)


DDP_PROBE = r"""
import json, sys
import torch
import torch.distributed as dist
from lightning.pytorch import Callback
from gem_lightning.cli.app import cli_main

seen = {}
class Probe(Callback):
    def on_train_start(self, trainer, pl_module):
        seen.update(backend=dist.get_backend(), world_size=dist.get_world_size(), device=str(pl_module.device),
                    wrapper=type(trainer.strategy.model).__name__,
                    sync_batchnorm=sum(isinstance(m, torch.nn.SyncBatchNorm) for m in pl_module.modules()))
    def on_train_end(self, trainer, pl_module):
        value = torch.ones(1, device=pl_module.device)
        dist.all_reduce(value)
        seen.update(all_reduce=value.item(), steps=trainer.global_step)

cli = cli_main(sys.argv[1:], run=False)
cli.trainer.callbacks.append(Probe())
cli.trainer.fit(cli.model, cli.datamodule)
print(json.dumps(seen))
"""


def test_ddp_on_one_gpu_uses_nccl_and_sync_batchnorm(tiny_dataset, tmp_path, cpu_env, isolated_cache):
    from test_distributed import clean_launch_env

    args = ["--config", str(REPO / "configs" / "ddp_gpu.yaml"), "--trainer.devices", "1", "--data.data_dir", str(tiny_dataset),
            *TINY_MODEL, "--trainer.max_steps", "4", "--trainer.enable_progress_bar", "false", "--data.image_size", "32",
            "--data.batch_size", "8", "--data.loader.num_workers", "0", "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"),
            "--checkpoint.dirpath", str(tmp_path / "ckpt")]  # fmt: skip
    env = dict(clean_launch_env(cpu_env), GEM_LIGHTNING_CACHE=str(isolated_cache))
    done = subprocess.run([sys.executable, "-c", DDP_PROBE, *args], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["backend"] == "nccl" and seen["world_size"] == 1 and seen["device"].startswith("cuda")
    assert seen["wrapper"] == "DistributedDataParallel"
    assert seen["sync_batchnorm"] == 2, "configs/ddp_gpu.yaml's sync_batchnorm converts both batch-norm layers"
    assert seen["all_reduce"] == 1.0 and seen["steps"] == 4
    assert (tmp_path / "ckpt" / "last.ckpt").is_file()

"""Several processes: DDP on CPU (gloo), SLURM and torchrun environments, the launchers and configs.

The DDP tests run the real CLI in subprocesses (Lightning starts the second process by running
``main.py`` again) and read what the runs wrote: ``metrics.csv`` of the CSV logger, the prediction
files, the checkpoint folder.
"""

from __future__ import annotations

import csv
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import REPO, make_dataset, write_image
from helpers import TINY_MODEL, TINY_NETWORK, read_metrics
from torch.utils.data import DistributedSampler

from gem_lightning.data.samplers import FitEpochDistributedSampler

SEVEN_COLOURS = {
    "Amber": (230, 150, 30),
    "Azure": (40, 120, 230),
    "Crimson": (200, 20, 50),
    "Jade": (30, 170, 90),
    "Lilac": (190, 140, 220),
    "Olive": (120, 130, 30),
    "Slate": (90, 100, 120),
}
"""Seven classes, so that top-5 accuracy is not trivially 1."""

LAUNCH_VARIABLES = (
    "MASTER_ADDR",
    "MASTER_PORT",
    "NODE_RANK",
    "RANK",
    "LOCAL_RANK",
    "WORLD_SIZE",
    "GROUP_RANK",
    "ROLE_RANK",
    "LOCAL_WORLD_SIZE",
    "GROUP_WORLD_SIZE",
    "ROLE_WORLD_SIZE",
    "ROLE_NAME",
)
LAUNCH_PREFIXES = ("SLURM_", "TORCHELASTIC_", "PL_")


def clean_launch_env(env: dict[str, str]) -> dict[str, str]:
    """``env`` without the variables of an outer launcher (pytest itself may run inside SLURM or torchrun)."""
    return {key: value for key, value in env.items() if key not in LAUNCH_VARIABLES and not key.startswith(LAUNCH_PREFIXES)}


def subprocess_env(base: dict[str, str], cache: Path, *, threads: int = 2) -> dict[str, str]:
    """``cpu_env`` plus the test's decode cache, with no outer launcher's variables."""
    env = clean_launch_env(base)
    env.update(GEM_LIGHTNING_CACHE=str(cache), OMP_NUM_THREADS=str(threads))
    return env


def run_command(
    command: list[str], env: dict[str, str], *, timeout: float = 240, cwd: Path = REPO, check: bool = True
) -> subprocess.CompletedProcess:
    """Run ``command`` in its own process group; on timeout kill the whole group (DDP ranks included)."""
    proc = subprocess.Popen(command, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        pytest.fail(f"{' '.join(command[:4])} ... did not finish within {timeout} s; output tail:\n{output[-5000:]}")
    result = subprocess.CompletedProcess(command, proc.returncode, output, None)
    if check and proc.returncode != 0:
        pytest.fail(f"{' '.join(map(str, command))}\nexited with status {proc.returncode}; output tail:\n{output[-5000:]}")
    return result


def run_cli(args: list, env: dict[str, str], *, timeout: float = 240) -> subprocess.CompletedProcess:
    """``python main.py <args>`` through :func:`run_command`, in a new interpreter as every DDP rank starts
    (a rank 0 forked from the warm forkserver of :mod:`warm_cli` aborted now and then)."""
    return run_command([sys.executable, str(REPO / "main.py"), *map(str, args)], env, timeout=timeout)


def run_cli_in_process(args: list, env: dict[str, str]) -> None:
    """``main.py <args>`` in this process (a cheaper single-process reference), restoring the environment."""
    from gem_lightning.cli.app import cli_main

    saved = dict(os.environ)
    try:
        os.environ["GEM_LIGHTNING_CACHE"] = env["GEM_LIGHTNING_CACHE"]
        cli_main([str(arg) for arg in args])
    finally:
        os.environ.clear()
        os.environ.update(saved)


def ddp_args(processes: int) -> list[str]:
    if processes == 1:
        return ["--trainer.accelerator", "cpu", "--trainer.devices", "1"]
    return ["--config", REPO / "configs" / "ddp_cpu.yaml", "--trainer.devices", str(processes)]


# A trained checkpoint and a dataset whose evaluation splits do not divide evenly -----------------

EVAL_BATCH = 5


def seven_class_dataset(root: Path) -> Path:
    """8 train and 3 test images per class, the same pixels in every run (``make_dataset`` seeds
    with ``hash()``, which changes between interpreter runs), so the trained model is the same too."""
    for c, (name, colour) in enumerate(SEVEN_COLOURS.items()):
        for split, count in (("train", 8), ("test", 3)):
            for i in range(count):
                write_image(root / split / name / f"{name.lower()} {i}.jpg", colour, seed=1000 * c + 100 * (split == "test") + i)
    return root


@pytest.fixture(scope="module")
def ddp_fit(tmp_path_factory, request):
    """Dataset + a 2-process DDP ``fit`` through ``configs/ddp_cpu.yaml`` (1 short epoch)."""
    root = tmp_path_factory.mktemp("ddp")
    data = seven_class_dataset(root / "gems")
    base = root / "base.yaml"
    base.write_text(
        yaml.safe_dump(
            {
                "seed_everything": 7,
                "trainer": {
                    "precision": "32-true",
                    "enable_progress_bar": False,
                    "log_every_n_steps": 1,
                    "logger": {
                        "class_path": "lightning.pytorch.loggers.CSVLogger",
                        "init_args": {"save_dir": str(root / "fit"), "name": "gem"},
                    },
                },
                "model": {"network": TINY_NETWORK.to_config(), "optimizer": {"class_path": "torch.optim.Adam", "init_args": {"lr": 0.01}}},
                "data": {
                    "data_dir": str(data),
                    "image_size": 32,
                    "batch_size": EVAL_BATCH,
                    "loader": {"num_workers": 0},
                    "val_fraction": 0.375,
                    "seed": 3,
                },
                "summary": {"max_depth": 0},
            }
        )
    )
    env = subprocess_env(dict(os.environ, PYTHONPATH=str(REPO), PYTHONWARNINGS="ignore"), root / "cache", threads=1)
    run_cli(["fit", "--config", base, *ddp_args(2), "--trainer.max_epochs", "2"], env)
    (version,) = (root / "fit" / "gem").iterdir()
    return {"root": root, "data": data, "base": base, "env": env, "version": version, "ckpt": version / "checkpoints" / "last.ckpt"}


def split_sizes(data: Path, cache: Path) -> dict[str, int]:
    from gem_lightning.data.cache import Cache
    from gem_lightning.data.datamodule import GemDataModule
    from gem_lightning.data.loader import Loader

    datamodule = GemDataModule(
        str(data), image_size=32, loader=Loader(num_workers=0), cache=Cache(dir=str(cache)), val_fraction=0.375, seed=3
    )
    datamodule.setup("fit")
    datamodule.setup("test")
    return {"val": len(datamodule.paths("val")), "test": len(datamodule.paths("test"))}


@pytest.mark.slow
def test_ddp_fit_writes_checkpoints_config_and_logs_once(ddp_fit):
    version = ddp_fit["version"]
    assert sorted(p.name for p in (ddp_fit["root"] / "fit" / "gem").iterdir()) == [version.name], "one run folder for all ranks"
    files = sorted(str(p.relative_to(version)) for p in version.rglob("*") if p.is_file())
    checkpoints = [f for f in files if f.startswith("checkpoints/")]
    assert len(checkpoints) == 2 and "checkpoints/last.ckpt" in checkpoints, files
    assert [f for f in checkpoints if f.startswith("checkpoints/best-")], files
    assert {"config.yaml", "hparams.yaml", "metrics.csv"} <= set(files), files
    assert not [f for f in files if f.endswith(".tmp") or ".part-" in f], f"leftover temporary files: {files}"
    rows = list(csv.DictReader((version / "metrics.csv").open()))
    val_rows = [row for row in rows if row.get("val/acc")]
    assert [row["epoch"] for row in val_rows] == ["0", "1"], f"rank 0 alone logs, once per validation: {val_rows}"
    checkpoint = torch.load(ddp_fit["ckpt"], map_location="cpu", weights_only=True)
    # 35 training images: 18 per rank (the DistributedSampler pads), 4 batches of 5 per epoch.
    assert (checkpoint["global_step"], checkpoint["epoch"]) == (8, 1)


@pytest.fixture(scope="module")
def ddp_stream(ddp_fit):
    """``ddp_fit``'s dataset optimized into a stream with the same split."""
    from gem_lightning.data.tools.optimize import optimize_dataset

    stream = ddp_fit["root"] / "stream"
    optimize_dataset(ddp_fit["data"], str(stream), image_size=32, val_fraction=0.375, seed=3, num_workers=1)
    return stream


@pytest.mark.slow
def test_ddp_fit_streams_a_shard_to_each_process(ddp_fit, ddp_stream):
    save_dir = ddp_fit["root"] / "fit-stream"
    run_cli(
        [
            "fit",
            "--config",
            ddp_fit["base"],
            *ddp_args(2),
            "--data.data_dir",
            ddp_stream,
            "--trainer.max_epochs",
            "2",
            "--trainer.logger.init_args.save_dir",
            save_dir,
        ],
        ddp_fit["env"],
    )
    checkpoint = torch.load(next(save_dir.rglob("last.ckpt")), map_location="cpu", weights_only=False)
    # 21 training images streamed to 2 processes, a shard each (LitData evens the shares): 3 batches of at
    # most 5 per epoch, where one process reading them all would take 5.
    assert (checkpoint["global_step"], checkpoint["epoch"]) == (6, 1)
    assert "combined_loader" in checkpoint["loops"]["fit_loop"]["state_dict"]
    assert 0.0 <= read_metrics(save_dir)["val/acc"] <= 1.0


@pytest.mark.slow
@pytest.mark.parametrize(
    "subcommand, stage, source", [("validate", "val", "folder"), ("test", "test", "stream")]
)  # both subcommands, both sources: val and test share the loader, its unpadded sampler and the metrics' code
def test_evaluation_metrics_are_exact_under_ddp(ddp_fit, ddp_stream, subcommand, stage, source):
    data = ["--data.data_dir", ddp_stream] if source == "stream" else []
    sizes = split_sizes(ddp_fit["data"], Path(ddp_fit["env"]["GEM_LIGHTNING_CACHE"]))
    count = sizes[stage]
    assert count % 2 == 1, "the split must not divide evenly between 2 processes"
    per_rank = [len(range(rank, count, 2)) for rank in (0, 1)]
    assert math.ceil(per_rank[0] / EVAL_BATCH) != math.ceil(per_rank[1] / EVAL_BATCH), "ranks should run different batch counts"

    metrics = {}
    for processes in (1, 2):
        save_dir = ddp_fit["root"] / f"{subcommand}-{source}-{processes}"
        run = run_cli if processes == 2 else run_cli_in_process
        run(
            [
                subcommand,
                "--config",
                ddp_fit["base"],
                *ddp_args(processes),
                "--ckpt_path",
                ddp_fit["ckpt"],
                *data,
                "--trainer.logger.init_args.save_dir",
                save_dir,
            ],
            ddp_fit["env"],
        )
        metrics[processes] = read_metrics(save_dir)

    for key in ("acc", "acc_top5", "f1", "samples", "loss"):
        name = f"{stage}/{key}"
        assert name in metrics[1] and name in metrics[2], f"{name} missing: {sorted(metrics[1])} / {sorted(metrics[2])}"
    assert metrics[1][f"{stage}/samples"] == count, f"every {stage} image counted once: {metrics[1]}"
    assert 1 / 7 + 0.01 < metrics[1][f"{stage}/acc"] < 1, (
        f"a model that predicts one class for everything (acc 1/7) or everything right would hide errors: {metrics[1]}"
    )
    for key, tolerance in (("acc", 1e-6), ("acc_top5", 1e-6), ("f1", 1e-6), ("samples", 0), ("loss", 1e-5)):
        name = f"{stage}/{key}"
        assert metrics[2][name] == pytest.approx(metrics[1][name], abs=tolerance), (
            f"{name}: 2 processes {metrics[2][name]} != 1 process {metrics[1][name]}"
        )


@pytest.mark.slow
def test_predict_under_ddp_writes_each_image_once_in_input_order(ddp_fit):
    from gem_lightning.data.datasets import find_predict_files

    folder = ddp_fit["data"] / "test"
    broken = folder / "Amber" / "zz broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    inputs = [str(p) for p in find_predict_files(str(folder))]
    assert len(inputs) % 2 == 0  # 21 images + 1 broken file: 11 per rank, one rank has the broken file

    outputs = {}
    for processes in (1, 2):
        output = ddp_fit["root"] / f"predictions-{processes}.csv"
        run = run_cli if processes == 2 else run_cli_in_process
        run(
            [
                "predict",
                "--config",
                ddp_fit["base"],
                *ddp_args(processes),
                "--ckpt_path",
                ddp_fit["ckpt"],
                "--data.predict_path",
                folder,
                "--predictions.output",
                output,
                "--trainer.logger.init_args.save_dir",
                ddp_fit["root"] / f"predict-{processes}",
            ],
            ddp_fit["env"],
        )
        rows = list(csv.DictReader(output.open()))
        rejected = list(csv.DictReader(output.with_name(f"{output.stem}.rejected.csv").open()))
        leftovers = [p.name for p in output.parent.iterdir() if p.name.startswith(f".{output.name}")]
        assert not leftovers, f"part files left behind: {leftovers}"
        outputs[processes] = rows, rejected

    rows, rejected = outputs[2]
    good = [path for path in inputs if path != str(broken)]
    assert [row["path"] for row in rows] == good, "one row per readable image, once, in input order"
    assert [row["path"] for row in rejected] == [str(broken)]
    reference = outputs[1][0]
    assert [row["prediction"] for row in rows] == [row["prediction"] for row in reference]
    for row, ref in zip(rows, reference):
        assert float(row["probability"]) == pytest.approx(float(ref["probability"]), abs=1e-5), row["path"]


def test_every_rank_gets_the_same_split(tiny_dataset, isolated_cache, monkeypatch):
    from gem_lightning.data.cache import Cache
    from gem_lightning.data.datamodule import GemDataModule
    from gem_lightning.data.loader import Loader

    splits = []
    for rank in (0, 1):
        for key, value in {"RANK": rank, "LOCAL_RANK": rank, "WORLD_SIZE": 2, "NODE_RANK": 0}.items():
            monkeypatch.setenv(key, str(value))
        datamodule = GemDataModule(
            str(tiny_dataset), image_size=32, loader=Loader(num_workers=0), cache=Cache(dir=None), val_fraction=0.3, seed=5
        )
        datamodule.setup("fit")
        splits.append((datamodule.paths("train"), datamodule.paths("val")))
    assert splits[0] == splits[1]
    assert splits[0][1] and not set(splits[0][0]) & set(splits[0][1])


# Cluster environments, detected from the launcher's variables ------------------------------------


@pytest.fixture
def launcher_env(monkeypatch):
    """A clean slate of launcher variables; restores Lightning's rank-zero state afterwards."""
    from lightning.pytorch.utilities.rank_zero import rank_zero_only

    saved_env, rank = dict(os.environ), getattr(rank_zero_only, "rank", 0)
    for key in list(os.environ):
        if key in LAUNCH_VARIABLES or key.startswith(LAUNCH_PREFIXES):
            monkeypatch.delenv(key)
    yield monkeypatch
    monkeypatch.undo()
    os.environ.clear()  # Lightning's environments also write MASTER_ADDR / MASTER_PORT themselves
    os.environ.update(saved_env)
    rank_zero_only.rank = rank


def cli_trainer(tiny_dataset: Path, *extra: str):
    """The Trainer that ``main.py fit`` would build with these arguments, built in this process."""
    from gem_lightning.cli.app import GemCLI
    from gem_lightning.data.datamodule import GemDataModule
    from gem_lightning.training.module import GemClassifier

    class InProcessCLI(GemCLI):
        def before_instantiate_classes(self) -> None:
            if "subcommand" in self.config:  # run=False parses without a subcommand: nothing to restore
                super().before_instantiate_classes()

    cli = InProcessCLI(
        GemClassifier,
        GemDataModule,
        seed_everything_default=42,
        run=False,
        args=[
            "--data.data_dir",
            str(tiny_dataset),
            "--data.image_size",
            "32",
            "--data.loader.num_workers",
            "0",
            "--data.cache.dir",
            "null",
            *TINY_MODEL,
            "--trainer.accelerator",
            "cpu",
            "--trainer.strategy",
            "ddp",
            "--trainer.logger",
            "false",
            *extra,
        ],
    )
    return cli.trainer


def test_slurm_variables_select_the_slurm_environment(tiny_dataset, launcher_env):
    from lightning.pytorch.plugins.environments import SLURMEnvironment

    for key, value in {
        "SLURM_NTASKS": "2",
        "SLURM_NTASKS_PER_NODE": "2",
        "SLURM_NNODES": "1",
        "SLURM_JOB_NUM_NODES": "1",
        "SLURM_PROCID": "1",
        "SLURM_LOCALID": "1",
        "SLURM_NODEID": "0",
        "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NAME": "gem-fit",
        "SLURM_NODELIST": "gpu[07-08]",
        "SLURM_CPUS_PER_TASK": "1",
    }.items():
        launcher_env.setenv(key, value)
    trainer = cli_trainer(tiny_dataset, "--trainer.devices", "2", "--trainer.num_nodes", "1")
    environment = trainer._accelerator_connector.cluster_environment
    assert isinstance(environment, SLURMEnvironment), type(environment)
    assert environment.auto_requeue, "SIGUSR1 requeue is on by default"
    assert (trainer.world_size, trainer.global_rank, trainer.local_rank, trainer.node_rank) == (2, 1, 1, 0)
    assert (environment.main_address, environment.main_port) == ("gpu07", 15000 + 4242), "rendezvous from the job"
    assert not trainer.is_global_zero


def test_torchrun_variables_select_the_torchelastic_environment(tiny_dataset, launcher_env):
    from lightning.pytorch.plugins.environments import TorchElasticEnvironment

    for key, value in {
        "TORCHELASTIC_RUN_ID": "gem",
        "RANK": "3",
        "LOCAL_RANK": "1",
        "WORLD_SIZE": "4",
        "GROUP_RANK": "1",
        "ROLE_RANK": "3",
        "LOCAL_WORLD_SIZE": "2",
        "GROUP_WORLD_SIZE": "2",
        "ROLE_WORLD_SIZE": "4",
        "MASTER_ADDR": "node0",
        "MASTER_PORT": "29500",
    }.items():
        launcher_env.setenv(key, value)
    trainer = cli_trainer(tiny_dataset, "--trainer.devices", "2", "--trainer.num_nodes", "2")
    environment = trainer._accelerator_connector.cluster_environment
    assert isinstance(environment, TorchElasticEnvironment), type(environment)
    assert (trainer.world_size, trainer.global_rank, trainer.local_rank, trainer.node_rank) == (4, 3, 1, 1)
    assert environment.main_address == "node0" and environment.main_port == 29500


# Launchers and configs ---------------------------------------------------------------------------


def test_ddp_configs_stack_on_a_main_config(tiny_dataset, launcher_env):
    from lightning.pytorch.strategies import DDPStrategy

    cpu = yaml.safe_load((REPO / "configs" / "ddp_cpu.yaml").read_text())["trainer"]
    gpu = yaml.safe_load((REPO / "configs" / "ddp_gpu.yaml").read_text())["trainer"]
    assert (cpu["accelerator"], cpu["strategy"], cpu["devices"]) == ("cpu", "ddp", 2)
    assert (gpu["accelerator"], gpu["strategy"], gpu["sync_batchnorm"]) == ("gpu", "ddp", True)
    assert "precision" not in cpu and "precision" not in gpu  # the main config's (`auto` in the shipped ones)
    # Both parse as trainer options (the GPU one with the accelerator overridden: no GPU here).
    for config, extra in (("ddp_cpu.yaml", []), ("ddp_gpu.yaml", ["--trainer.accelerator", "cpu", "--trainer.precision", "32-true"])):
        trainer = cli_trainer(tiny_dataset, "--config", str(REPO / "configs" / config), *extra)
        assert isinstance(trainer.strategy, DDPStrategy)
    assert trainer.strategy._layer_sync is not None, "sync_batchnorm reaches the strategy"


FAKE_SRUN = """#!/bin/sh
printf '%s\\n' "$@" > "$SRUN_ARGS"
"""


def test_slurm_script_launches_one_task_per_device_and_resumes_from_the_newest_checkpoint(tmp_path):
    script = REPO / "scripts" / "slurm_fit.sh"
    text = script.read_text()
    for directive in ("--nodes=", "--ntasks-per-node=", "--gres=gpu:", "--signal=SIGUSR1@90", "--requeue"):
        assert f"#SBATCH {directive}" in text, directive
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text(FAKE_SRUN)
    (bin_dir / "srun").chmod(0o755)
    env = clean_launch_env(dict(os.environ))
    env.update(
        PATH=f"{bin_dir}:{env['PATH']}",
        SRUN_ARGS=str(tmp_path / "args"),
        SLURM_JOB_ID="77",
        SLURM_JOB_NAME="gem-fit",
        SLURM_NNODES="2",
        SLURM_NTASKS_PER_NODE="4",
        RUN_DIR=str(tmp_path / "run"),
    )

    def launched() -> list[str]:
        run_command(["bash", str(script), "--trainer.max_epochs", "3"], env, timeout=30, cwd=tmp_path)
        return (tmp_path / "args").read_text().splitlines()

    args = launched()
    main = args.index("main.py")
    assert args[main + 1 : main + 6] == ["fit", "--config", "configs/gemstones.yaml", "--config", "configs/ddp_gpu.yaml"], args
    for flag, value in (
        ("--trainer.num_nodes", "2"),
        ("--trainer.devices", "4"),
        ("--trainer.strategy", "ddp"),
        ("--checkpoint.dirpath", f"{tmp_path}/run/checkpoints"),
        ("--trainer.max_epochs", "3"),
    ):
        assert args[args.index(flag) + 1] == value, (flag, args)
    assert "--ckpt_path" not in args, "nothing to resume on the first start"

    checkpoints = tmp_path / "run" / "checkpoints"
    (checkpoints / "last.ckpt").write_bytes(b"old")
    os.utime(checkpoints / "last.ckpt", (1_000_000, 1_000_000))
    (tmp_path / "run" / "hpc_ckpt_1.ckpt").write_bytes(b"new")
    args = launched()
    assert args[args.index("--ckpt_path") + 1] == f"{tmp_path}/run/hpc_ckpt_1.ckpt", args


@pytest.mark.slow
def test_torchrun_script_trains_with_two_processes(tmp_path, isolated_cache, cpu_env):
    data = make_dataset(tmp_path / "gems", train_per_class=5, test_per_class=1)
    env = subprocess_env(cpu_env, isolated_cache, threads=1)
    env.update(
        PYTHON=sys.executable,
        NPROC_PER_NODE="2",
        RUN_ID="t1",
        RUN_DIR=str(tmp_path / "run"),
        CONFIG=str(REPO / "configs" / "fp32.yaml"),
        DDP_CONFIG=str(REPO / "configs" / "ddp_cpu.yaml"),
    )
    args = [
        "--data.data_dir",
        data,
        "--data.image_size",
        "32",
        "--data.batch_size",
        "4",
        "--data.loader.num_workers",
        "0",
        *TINY_MODEL,
        "--trainer.max_epochs",
        "1",
        "--trainer.limit_train_batches",
        "2",
        "--trainer.enable_progress_bar",
        "false",
        "--summary.max_depth",
        "0",
        "--trainer.logger.init_args.save_dir",
        tmp_path / "logs",
    ]
    result = run_command(["bash", str(REPO / "scripts" / "torchrun_fit.sh"), *map(str, args)], env, timeout=240, cwd=tmp_path)
    checkpoints = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert checkpoints == ["best-000.ckpt", "last.ckpt"], checkpoints
    checkpoint = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert checkpoint["global_step"] == 2
    assert len(list((tmp_path / "logs").rglob("metrics.csv"))) == 1, result.stdout[-3000:]
    assert "MEMBER: 2/2" in result.stdout, f"two processes joined:\n{result.stdout[-3000:]}"


def test_the_training_sampler_shuffles_for_the_fit_loops_epoch_even_before_set_epoch():
    """Lightning 2.6 makes the first iterator of a resumed run before it calls ``set_epoch``; a
    loader with workers draws its indices right then, so the sampler must know the epoch itself."""
    fit_epoch = 3
    sampler = FitEpochDistributedSampler(range(20), epoch=lambda: fit_epoch, num_replicas=2, rank=1, seed=42)
    expected = DistributedSampler(range(20), num_replicas=2, rank=1, seed=42)
    expected.set_epoch(fit_epoch)
    assert list(sampler) == list(expected)
    expected.set_epoch(0)
    assert list(sampler) != list(expected), "epoch 0's order is what a plain DistributedSampler gives here"
